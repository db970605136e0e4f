/* hub.c: per-session event log and fan-out to SSE subscribers (see hub.h).
 *
 * Ownership: a hub owns its frames (one reference each) and its subscribers.
 * A write in flight owns one more reference to each frame it carries, so a
 * frame evicted from the log stays alive until the kernel has taken it. A
 * subscriber is freed from its connection's close callback (a cut: a drop,
 * a write error, the client leaving) or by subscriber_end() (a normal end,
 * which lets go of the connection first); a write that completes after that
 * finds its subscriber pointer cleared.
 */
#include "hub.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "server.h"
#include "sse.h"

/* One encoded event, shared by every subscriber. */
struct frame {
    uint32_t refs;
    uint64_t seq; /* 0 for a frame outside the log (one subscriber's preamble) */
    size_t len;
    char data[];
};

struct subscriber;

/* One stream write in flight: the frames it carries, one reference each. */
struct sub_write {
    struct list link;       /* in sub->writes while the subscriber lives */
    struct subscriber *sub; /* NULL once the subscriber is gone */
    unsigned nframes;
    struct frame *frames[];
};

/* A subscriber is a cursor into its hub's log plus the frames it has been
 * given but not yet handed to its connection. While it replays, it reads
 * from the log; once caught up, every publish gives it a reference at once,
 * so eviction from the log can never make a live subscriber miss an event. */
struct subscriber {
    struct list hub_link; /* in hub->subscribers */
    struct list all_link; /* in all_subscribers, ordered by last_write_ms */
    struct hub *hub;      /* never NULL: hub_destroy() ends every stream first */
    struct conn *conn;
    uint64_t next_seq;    /* next frame this subscriber needs */
    struct frame **queue; /* referenced, not yet handed to the connection */
    unsigned queued, queue_cap;
    size_t queued_bytes;
    struct list writes;   /* struct sub_write in flight; a completion is "proceed" */
    struct list dirty_link; /* in dirty_subscribers while it has frames to flush */
    uint64_t last_write_ms; /* uv_now() when bytes were last handed to its connection */
    uint64_t deadline_ms; /* 0: none; else it sits in the deadline heap */
    size_t heap_index;    /* its place in the deadline heap */
    void (*on_leave)(void *arg);
    void *leave_arg;
};

struct hub {
    struct frame **ring; /* the log: ring[(first + i) % capacity], i < count */
    size_t capacity, first, count;
    size_t bytes;        /* bytes of the frames in the log */
    uint64_t last_seq;   /* seq of the newest frame, 0 when none yet */
    uint64_t run_start_seq; /* first frame of the latest run, 0 when none */
    uint32_t epoch;      /* incarnation: ids from another hub are foreign */
    struct list subscribers;
    size_t subscriber_count;
};

#define HUB_MAX_BATCH 64
#define HUB_MAX_BATCH_BYTES (64 * 1024)
#define HUB_FLUSH_BUDGET (256 * 1024)

static struct hub_config config;
static uv_loop_t *hub_loop;
/* Every subscriber, least recently written first: a write moves it to the
 * tail (O(1)), so the head is always the next stream to fall silent and the
 * one timer is armed for the head's last_write_ms + heartbeat_ms. */
static struct list all_subscribers;
static uv_timer_t heartbeat_timer;
/* Publishing only queues frames; these two flush every subscriber that got
 * some once per loop iteration (see hub_publish). */
static uv_check_t flush_check;
static uv_idle_t flush_idle;
static struct list dirty_subscribers;
static size_t total_subscribers;
static size_t total_frames;
static uint64_t dropped[HUB_DROP_REASONS];
static uint32_t epoch_next;
static struct buf encode_scratch;

/* Streams with a deadline, earliest first: a binary min-heap on
 * deadline_ms, so one timer armed at heap[0] serves them all and each
 * insert or removal costs O(log n). */
static struct subscriber **deadline_heap;
static size_t deadline_count, deadline_cap;
static uv_timer_t deadline_timer;

/* A comment line and no blank line: WHATWG parsers ignore it, and no
 * parser dispatches an (empty) message for it (fetch-event-source's does on
 * every blank line). Frames end with a blank line, so the comment always
 * starts a line. */
static const char keepalive_comment[] = ": keepalive\n";
static struct frame *keepalive_frame; /* shared by every idle stream */

static void subscriber_offer(struct subscriber *s, struct frame *f);
static void heartbeat_cb(uv_timer_t *t);
static void deadline_cb(uv_timer_t *t);
static void flush_check_cb(uv_check_t *h);
static void flush_idle_cb(uv_idle_t *h);
static void subscriber_schedule(struct subscriber *s);

static void frame_release(struct frame *f)
{
    if (--f->refs == 0) {
        total_frames--;
        free(f);
    }
}

/* A frame outside the log, for bytes sent to one subscriber only. */
static struct frame *frame_private(const char *data, size_t len)
{
    struct frame *f = xmalloc(sizeof(*f) + len);
    f->refs = 1;
    f->seq = 0;
    f->len = len;
    memcpy(f->data, data, len);
    total_frames++;
    return f;
}


void hub_init(uv_loop_t *loop, const struct hub_config *cfg)
{
    config = *cfg;
    hub_loop = loop;
    list_init(&all_subscribers);
    list_init(&dirty_subscribers);
    uv_check_init(loop, &flush_check);
    uv_idle_init(loop, &flush_idle);
    if (uv_random(NULL, NULL, &epoch_next, sizeof(epoch_next), 0, NULL) != 0)
        epoch_next = (uint32_t)(uv_hrtime() ^ (uint64_t)uv_os_getpid());
    keepalive_frame = frame_private(keepalive_comment, sizeof(keepalive_comment) - 1);
    uv_timer_init(loop, &heartbeat_timer);
    uv_unref((uv_handle_t *)&heartbeat_timer);
    uv_timer_init(loop, &deadline_timer);
    uv_unref((uv_handle_t *)&deadline_timer);
}

void hub_shutdown(void)
{
    uv_timer_stop(&heartbeat_timer);
    uv_close((uv_handle_t *)&heartbeat_timer, NULL);
    uv_timer_stop(&deadline_timer);
    uv_close((uv_handle_t *)&deadline_timer, NULL);
    free(deadline_heap);
    deadline_heap = NULL;
    deadline_count = deadline_cap = 0;
    uv_check_stop(&flush_check);
    uv_close((uv_handle_t *)&flush_check, NULL);
    uv_idle_stop(&flush_idle);
    uv_close((uv_handle_t *)&flush_idle, NULL);
    buf_free(&encode_scratch);
    frame_release(keepalive_frame);
    keepalive_frame = NULL;
}

struct hub *hub_create(void)
{
    struct hub *h = xcalloc(1, sizeof(*h));
    h->epoch = epoch_next++;
    list_init(&h->subscribers);
    return h;
}

static struct frame *log_at(const struct hub *h, size_t i)
{
    return h->ring[(h->first + i) % h->capacity];
}

static uint64_t log_oldest_seq(const struct hub *h)
{
    return h->count ? log_at(h, 0)->seq : h->last_seq + 1;
}

/* The frame with this seq, or NULL when it is not (or no longer) retained. */
static struct frame *log_find(const struct hub *h, uint64_t seq)
{
    uint64_t oldest = log_oldest_seq(h);
    if (seq < oldest || seq > h->last_seq)
        return NULL;
    return log_at(h, (size_t)(seq - oldest));
}

static void log_evict_oldest(struct hub *h)
{
    struct frame *f = log_at(h, 0);
    h->first = (h->first + 1) % h->capacity;
    h->count--;
    h->bytes -= f->len;
    frame_release(f);
}

static void log_append(struct hub *h, struct frame *f)
{
    if (h->count == h->capacity) {
        size_t limit = (size_t)config.history;
        if (h->capacity >= limit) {
            log_evict_oldest(h);
        } else {
            size_t cap = h->capacity ? h->capacity * 2 : 8;
            if (cap > limit)
                cap = limit;
            struct frame **ring = xmalloc(cap * sizeof(*ring));
            for (size_t i = 0; i < h->count; i++)
                ring[i] = log_at(h, i);
            free(h->ring);
            h->ring = ring;
            h->capacity = cap;
            h->first = 0;
        }
    }
    h->ring[(h->first + h->count) % h->capacity] = f;
    h->count++;
    h->bytes += f->len;
    /* The newest frame always stays, even if it alone passes history_bytes. */
    while (h->count > 1 && h->bytes > config.history_bytes)
        log_evict_oldest(h);
}

static void format_id(char *out, size_t size, uint32_t epoch, uint64_t seq)
{
    snprintf(out, size, "%08" PRIx32 "-%" PRIu64, epoch, seq);
}

uint64_t hub_publish(struct hub *h, const char *event, const char *data, size_t data_len,
                     int run_start)
{
    char id[40];
    uint64_t seq = h->last_seq + 1;
    format_id(id, sizeof(id), h->epoch, seq);
    buf_reset(&encode_scratch);
    sse_encode(&encode_scratch, id, event, data, data_len);

    struct frame *f = xmalloc(sizeof(*f) + encode_scratch.len);
    f->refs = 1;
    f->seq = seq;
    f->len = encode_scratch.len;
    memcpy(f->data, encode_scratch.data, encode_scratch.len);
    h->last_seq = seq;
    if (run_start)
        h->run_start_seq = seq;
    total_frames++;
    log_append(h, f);

    /* Subscribers only queue a reference here; the frames go out when the
     * loop iteration ends (flush_dirty), one vectored write per subscriber
     * for everything published meanwhile. An upstream read carries many
     * events when the loop is busy, so under load a write carries many
     * frames and the syscalls per event fall instead of the loop falling
     * behind (one write per event per subscriber was what capped fan-out). */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &h->subscribers)
        subscriber_offer(container_of(pos, struct subscriber, hub_link), f);
    return seq;
}

/* ---- stream deadlines ----------------------------------------------------- */

static void heap_place(size_t i, struct subscriber *s)
{
    deadline_heap[i] = s;
    s->heap_index = i;
}

static void heap_sift_up(size_t i)
{
    struct subscriber *s = deadline_heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (deadline_heap[parent]->deadline_ms <= s->deadline_ms)
            break;
        heap_place(i, deadline_heap[parent]);
        i = parent;
    }
    heap_place(i, s);
}

static void heap_sift_down(size_t i)
{
    struct subscriber *s = deadline_heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= deadline_count)
            break;
        if (child + 1 < deadline_count &&
            deadline_heap[child + 1]->deadline_ms < deadline_heap[child]->deadline_ms)
            child++;
        if (s->deadline_ms <= deadline_heap[child]->deadline_ms)
            break;
        heap_place(i, deadline_heap[child]);
        i = child;
    }
    heap_place(i, s);
}

/* Arms the one deadline timer at the earliest deadline (or stops it). */
static void deadline_arm(void)
{
    if (deadline_count == 0) {
        uv_timer_stop(&deadline_timer);
        return;
    }
    uint64_t now = time_mono_ms(), due = deadline_heap[0]->deadline_ms;
    uv_timer_start(&deadline_timer, deadline_cb, due > now ? due - now : 0, 0);
}

static void deadline_insert(struct subscriber *s)
{
    if (deadline_count == deadline_cap) {
        deadline_cap = deadline_cap ? deadline_cap * 2 : 16;
        deadline_heap = xrealloc(deadline_heap, deadline_cap * sizeof(*deadline_heap));
    }
    deadline_heap[deadline_count] = s;
    s->heap_index = deadline_count++;
    heap_sift_up(s->heap_index);
    if (s->heap_index == 0)
        deadline_arm();
}

/* Removes s from the heap. The timer is re-armed only when the earliest
 * deadline changed; a timer left armed for a later one just fires early
 * and re-arms. */
static void deadline_remove(struct subscriber *s)
{
    size_t i = s->heap_index;
    struct subscriber *last = deadline_heap[--deadline_count];
    s->deadline_ms = 0;
    if (i == deadline_count)
        return;
    heap_place(i, last);
    if (i > 0 && deadline_heap[(i - 1) / 2]->deadline_ms > last->deadline_ms)
        heap_sift_up(i);
    else
        heap_sift_down(i);
}

/* ---- subscribers ---------------------------------------------------------- */

static void subscriber_drop(struct subscriber *s, enum hub_drop_reason reason)
{
    dropped[reason]++;
    conn_close(s->conn, 0); /* runs subscriber_on_close, which frees s */
}

static void sub_write_free(struct sub_write *w)
{
    for (unsigned i = 0; i < w->nframes; i++)
        frame_release(w->frames[i]);
    free(w);
}

/* Forgets s everywhere and frees it; writes in flight lose their
 * subscriber pointer (their frames are released when they complete). Cannot
 * fail. Called once: from the connection's close callback, or by
 * subscriber_end() for a stream that ends normally. */
static void subscriber_release(struct subscriber *s)
{
    while (!list_empty(&s->writes)) {
        struct sub_write *w = container_of(s->writes.next, struct sub_write, link);
        w->sub = NULL;
        list_remove(&w->link);
    }
    list_remove(&s->hub_link);
    s->hub->subscriber_count--;
    list_remove(&s->all_link);
    list_remove(&s->dirty_link);
    total_subscribers--;
    if (s->deadline_ms)
        deadline_remove(s);
    for (unsigned i = 0; i < s->queued; i++)
        frame_release(s->queue[i]);
    free(s->queue);
    if (s->on_leave)
        s->on_leave(s->leave_arg);
    free(s);
}

static void subscriber_on_close(struct conn *c, void *arg)
{
    subscriber_release(arg);
}

/* Ends s's stream normally, after what was already handed to its
 * connection: a chunked stream gets its last chunk and its connection
 * serves the next request (a client tells this end from a cut); an
 * HTTP/1.0 one is closed gracefully. Frees s. */
static void subscriber_end(struct subscriber *s)
{
    struct conn *conn = s->conn;
    subscriber_release(s);
    conn_stream_end(conn);
}

/* s handed bytes to its connection now: it goes to the tail of the
 * heartbeat order. O(1): this runs for every write of the fan-out. */
static void subscriber_touch(struct subscriber *s)
{
    s->last_write_ms = uv_now(hub_loop);
    list_remove(&s->all_link);
    list_insert_tail(&all_subscribers, &s->all_link);
}

static void subscriber_enqueue(struct subscriber *s, struct frame *f)
{
    if (s->queued == s->queue_cap) {
        s->queue_cap = s->queue_cap ? s->queue_cap * 2 : 8;
        s->queue = xrealloc(s->queue, s->queue_cap * sizeof(*s->queue));
    }
    f->refs++;
    s->queue[s->queued++] = f;
    s->queued_bytes += f->len;
}

/* Bytes this subscriber still has to receive that sit in runcast: frames
 * given to it but not handed over, plus what libuv could not write to the
 * kernel. The replay backlog is not counted: it is the log's, not a copy. */
static size_t subscriber_unsent_bytes(const struct subscriber *s)
{
    return s->queued_bytes + conn_write_queue_bytes(s->conn);
}

/* Moves the subscriber's queued frames into a new write, followed, while it
 * is still replaying, by up to max_frames / about max_bytes frames from the
 * log (frames are queued only once it has caught up, so the order holds).
 * Returns NULL when there is nothing to send; *lagged is set when the next
 * frame it needs was evicted before it could be sent. */
static struct sub_write *subscriber_take_batch(struct subscriber *s, size_t max_frames,
                                               size_t max_bytes, int *lagged)
{
    struct hub *h = s->hub;
    uint64_t behind = h->last_seq + 1 - s->next_seq;
    *lagged = behind > 0 && log_find(h, s->next_seq) == NULL;
    if (*lagged)
        return NULL;
    if (behind > max_frames)
        behind = max_frames;
    if (s->queued == 0 && behind == 0)
        return NULL;
    struct sub_write *w = xmalloc(sizeof(*w) + (s->queued + (size_t)behind) * sizeof(w->frames[0]));
    memcpy(w->frames, s->queue, s->queued * sizeof(w->frames[0]));
    w->nframes = s->queued;
    w->sub = NULL;
    list_init(&w->link);
    size_t bytes = s->queued_bytes;
    s->queued = 0;
    s->queued_bytes = 0;
    for (uint64_t i = 0; i < behind && (i == 0 || bytes < max_bytes); i++) {
        struct frame *f = log_find(h, s->next_seq++);
        f->refs++;
        bytes += f->len;
        w->frames[w->nframes++] = f;
    }
    return w;
}

static void write_done(struct conn *c, void *arg, int status);

/* Sends w's frames on conn with one vectored write (one chunk of a
 * chunked stream): what the kernel takes at once is written without a
 * request and w is freed; the rest, if any, is queued and w stays alive,
 * carrying owner (NULL: a write no subscriber waits for), until write_done.
 * Returns 1 when all was written, 0 when some was queued, or a negative
 * errno when the connection is closing (w is then freed here, and a
 * subscriber's close callback has run or will run). */
static int sub_write_send(struct conn *conn, struct sub_write *w, struct subscriber *owner)
{
    uv_buf_t small[HUB_MAX_BATCH + 2];
    uv_buf_t *bufs = w->nframes <= RC_ARRAY_SIZE(small) ? small : xmalloc(w->nframes * sizeof(*bufs));
    for (unsigned i = 0; i < w->nframes; i++)
        bufs[i] = uv_buf_init(w->frames[i]->data, (unsigned)w->frames[i]->len);
    w->sub = owner;
    if (owner)
        list_insert_tail(&owner->writes, &w->link);
    int rc = conn_stream_send(conn, bufs, w->nframes, write_done, w);
    if (rc != 0)
        list_remove(&w->link); /* a no-op when the close callback unlinked it */
    if (bufs != small)
        free(bufs);
    if (rc != 0)
        sub_write_free(w);
    return rc;
}

/* Hands what the subscriber has to send to its connection, unless the
 * connection is backed up (libuv holds bytes the kernel has not taken):
 * then the completion of the queued write calls back here. A replaying
 * subscriber writes at most HUB_FLUSH_BUDGET bytes per loop iteration and
 * continues in the next one, so one long replay cannot starve the others.
 * Returns -1 when s is gone (a lagging subscriber is dropped; a write error
 * closes it), else 0. */
static int subscriber_flush(struct subscriber *s)
{
    if (!list_empty(&s->writes) && conn_write_queue_bytes(s->conn) > 0)
        return 0;
    size_t sent = 0;
    for (;;) {
        if (sent >= HUB_FLUSH_BUDGET) {
            subscriber_schedule(s);
            return 0;
        }
        int lagged;
        struct sub_write *w = subscriber_take_batch(s, HUB_MAX_BATCH, HUB_MAX_BATCH_BYTES, &lagged);
        if (lagged) {
            subscriber_drop(s, HUB_DROP_LAGGED);
            return -1;
        }
        if (w == NULL)
            return 0;
        size_t bytes = 0;
        for (unsigned i = 0; i < w->nframes; i++)
            bytes += w->frames[i]->len;
        int rc = sub_write_send(s->conn, w, s);
        if (rc < 0)
            return -1;
        subscriber_touch(s);
        if (rc == 0)
            return 0; /* queued: write_done proceeds */
        sent += bytes;
    }
}

/* Flushes every subscriber that was given frames since the last flush. */
static void flush_dirty(void)
{
    uv_check_stop(&flush_check);
    uv_idle_stop(&flush_idle);
    /* Take the list: a subscriber that used up its budget schedules itself
     * again, for the next iteration, not for this walk. */
    struct list batch;
    list_init(&batch);
    if (!list_empty(&dirty_subscribers)) {
        batch.next = dirty_subscribers.next;
        batch.prev = dirty_subscribers.prev;
        batch.next->prev = &batch;
        batch.prev->next = &batch;
        list_init(&dirty_subscribers);
    }
    while (!list_empty(&batch)) {
        struct subscriber *s = container_of(batch.next, struct subscriber, dirty_link);
        list_remove(&s->dirty_link);
        subscriber_flush(s); /* may free s, which is unlinked already */
    }
}

/* The check handle runs right after the loop polled for I/O, so events read
 * from the upstream in this iteration go out in the same iteration. */
static void flush_check_cb(uv_check_t *h)
{
    flush_dirty();
}

/* An active idle handle keeps the next poll from blocking, so frames
 * published outside the I/O phase (timers: run timeouts, expiry) do not
 * wait for the next I/O event before they are flushed; it flushes them
 * before the poll when it gets there first. */
static void flush_idle_cb(uv_idle_t *h)
{
    flush_dirty();
}

/* Flushes s at the end of this loop iteration. */
static void subscriber_schedule(struct subscriber *s)
{
    if (list_linked(&s->dirty_link))
        return;
    if (list_empty(&dirty_subscribers)) {
        uv_check_start(&flush_check, flush_check_cb);
        uv_idle_start(&flush_idle, flush_idle_cb);
    }
    list_insert_tail(&dirty_subscribers, &s->dirty_link);
}

static void write_done(struct conn *c, void *arg, int status)
{
    struct sub_write *w = arg;
    struct subscriber *s = w->sub;
    list_remove(&w->link);
    sub_write_free(w);
    if (s == NULL)
        return;
    if (status < 0)
        conn_close(s->conn, 1);
    else
        subscriber_flush(s);
}

/* Gives a newly published frame to a subscriber that is caught up, and
 * drops the subscriber when its unsent bytes pass the buffer. */
static void subscriber_offer(struct subscriber *s, struct frame *f)
{
    if (s->next_seq == f->seq) {
        subscriber_enqueue(s, f);
        s->next_seq++;
    }
    /* A burst bigger than the buffer within one loop iteration: offer it to
     * the socket now rather than at the end of the iteration, since the
     * rule below is about bytes the kernel refused. */
    if (s->queued_bytes > config.subscriber_buffer && subscriber_flush(s) < 0)
        return;
    /* Only a connection that is backed up can be too slow: bytes queued in
     * one loop iteration for a socket that takes everything are in transit. */
    if (conn_write_queue_bytes(s->conn) > 0 &&
        subscriber_unsent_bytes(s) > config.subscriber_buffer) {
        subscriber_drop(s, HUB_DROP_SLOW);
        return;
    }
    subscriber_schedule(s);
}

/* Arms the heartbeat timer for the moment the least recently written
 * stream has been silent for heartbeat_ms. A write that moves that stream
 * away leaves the timer early; it then just re-arms. */
static void heartbeat_arm(void)
{
    if (config.heartbeat_ms == 0 || list_empty(&all_subscribers))
        return;
    const struct subscriber *oldest = container_of(all_subscribers.next, struct subscriber, all_link);
    uint64_t due = oldest->last_write_ms + config.heartbeat_ms, now = uv_now(hub_loop);
    uv_timer_start(&heartbeat_timer, heartbeat_cb, due > now ? due - now : 0, 0);
}

/* Sends `: keepalive` to every stream silent for heartbeat_ms, or that
 * would be within an eighth of it (coalescing: one wake-up serves streams
 * whose deadlines are close; an early keepalive costs a few bytes). A
 * stream whose bytes are still queued is not silent on our side: it only
 * moves to the tail. */
static void heartbeat_cb(uv_timer_t *t)
{
    if (config.heartbeat_ms == 0)
        return;
    uint64_t horizon = uv_now(hub_loop) + config.heartbeat_ms / 8;
    while (!list_empty(&all_subscribers)) {
        struct subscriber *s = container_of(all_subscribers.next, struct subscriber, all_link);
        if (s->last_write_ms + config.heartbeat_ms > horizon)
            break;
        if (list_empty(&s->writes) && s->queued == 0) {
            subscriber_enqueue(s, keepalive_frame);
            if (subscriber_flush(s) < 0)
                continue; /* a write error closed it: s is gone */
        }
        if (all_subscribers.next == &s->all_link)
            subscriber_touch(s);
    }
    heartbeat_arm();
}

/* Ends a stream whose deadline passed: what it was already handed goes out,
 * then a stream.closed without an id line, then a graceful close. Frames it
 * has not been handed yet (a replay under way) are not sent: the client
 * resumes after the last id it got, so nothing is lost. Frees s (through
 * the close callback). */
static void subscriber_expire(struct subscriber *s)
{
    static const char closing[] = "event: stream.closed\ndata: {\"reason\":\"token_expired\"}\n\n";
    struct frame *f = frame_private(closing, sizeof(closing) - 1);
    subscriber_enqueue(s, f);
    frame_release(f);
    int lagged;
    struct sub_write *w = subscriber_take_batch(s, 0, 0, &lagged);
    /* Sent without a subscriber: its completion may come after s is gone.
     * A failed send closed the connection and freed s already. */
    if (w != NULL && sub_write_send(s->conn, w, NULL) < 0)
        return;
    subscriber_end(s);
}

static void deadline_cb(uv_timer_t *t)
{
    uint64_t now = time_mono_ms();
    while (deadline_count > 0 && deadline_heap[0]->deadline_ms <= now) {
        struct subscriber *s = deadline_heap[0];
        deadline_remove(s); /* first: this loop ends whatever the close does */
        subscriber_expire(s);
    }
    deadline_arm();
}

/* Parses "<epoch hex>-<seq>" as made by format_id(). Returns 0 or -EINVAL. */
static int parse_id(const char *id, uint32_t *epoch, uint64_t *seq)
{
    char *end;
    if (strlen(id) < 10 || id[8] != '-')
        return -EINVAL;
    for (int i = 0; i < 8; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return -EINVAL;
    }
    if (id[9] < '0' || id[9] > '9')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(id + 9, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *epoch = (uint32_t)strtoul(id, NULL, 16);
    *seq = v;
    return 0;
}

uint32_t hub_incarnation(const struct hub *h)
{
    return h->epoch;
}

int hub_event_id_incarnation(const char *id, uint32_t *out)
{
    uint64_t seq;
    return parse_id(id, out, &seq);
}

/* Where a new subscriber starts, and the reason for a stream.reset (NULL when
 * the position is exact). */
static uint64_t start_position(const struct hub *h, const char *last_event_id, int from_live,
                               const char **reset_reason)
{
    uint64_t oldest = log_oldest_seq(h);
    *reset_reason = NULL;
    if (last_event_id != NULL) {
        uint32_t epoch;
        uint64_t seq;
        if (parse_id(last_event_id, &epoch, &seq) < 0 || epoch != h->epoch || seq > h->last_seq) {
            *reset_reason = "unknown_event_id";
            return oldest;
        }
        if (seq + 1 < oldest) {
            *reset_reason = "event_id_evicted";
            return oldest;
        }
        return seq + 1;
    }
    if (from_live || h->run_start_seq == 0)
        return h->last_seq + 1;
    if (h->run_start_seq < oldest) {
        *reset_reason = "run_start_evicted";
        return oldest;
    }
    return h->run_start_seq;
}

int hub_subscribe(struct hub *h, struct conn *conn, const char *last_event_id, int from_live)
{
    struct hub_subscribe_options opt = {.last_event_id = last_event_id, .from_live = from_live};
    return hub_subscribe_with(h, conn, &opt);
}

int hub_subscribe_with(struct hub *h, struct conn *conn, const struct hub_subscribe_options *opt)
{
    const char *last_event_id = opt->last_event_id;
    if (total_subscribers >= (size_t)config.max_subscribers)
        return -ENOSPC;
    struct subscriber *s = xcalloc(1, sizeof(*s));
    int err = conn_stream_begin(conn, 200,
                                "Content-Type: text/event-stream\r\n"
                                "Cache-Control: no-cache\r\n"
                                "X-Accel-Buffering: no\r\n",
                                1, subscriber_on_close, s);
    if (err < 0) {
        free(s);
        return err;
    }
    s->hub = h;
    s->conn = conn;
    list_init(&s->writes);
    list_init(&s->dirty_link);
    list_insert_tail(&h->subscribers, &s->hub_link);
    int first_stream = list_empty(&all_subscribers);
    s->last_write_ms = uv_now(hub_loop);
    list_insert_tail(&all_subscribers, &s->all_link);
    if (first_stream)
        heartbeat_arm();
    h->subscriber_count++;
    total_subscribers++;

    const char *reset_reason;
    s->next_seq = start_position(h, last_event_id, opt->from_live, &reset_reason);
    struct buf pre = {0};
    /* No blank line after retry: it joins the first event block, so no
     * parser dispatches an empty message for it. */
    buf_printf(&pre, "retry: %" PRIu64 "\n", config.retry_ms);
    if (reset_reason) {
        char data[128];
        int n = snprintf(data, sizeof(data), "{\"reason\":\"%s\"}", reset_reason);
        sse_encode(&pre, NULL, "stream.reset", data, (size_t)n);
    }
    struct frame *preamble = frame_private(pre.data, pre.len);
    buf_free(&pre);
    subscriber_enqueue(s, preamble);
    frame_release(preamble);
    s->on_leave = opt->on_leave;
    s->leave_arg = opt->leave_arg;
    if (opt->deadline_ms) {
        s->deadline_ms = opt->deadline_ms;
        deadline_insert(s);
    }
    subscriber_flush(s);
    return 0;
}

size_t hub_subscriber_count(const struct hub *h)
{
    return h->subscriber_count;
}

size_t hub_total_subscribers(void)
{
    return total_subscribers;
}

size_t hub_total_frames(void)
{
    return total_frames;
}

uint64_t hub_dropped_total(enum hub_drop_reason reason)
{
    return dropped[reason];
}

void hub_destroy(struct hub *h)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &h->subscribers) {
        struct subscriber *s = container_of(pos, struct subscriber, hub_link);
        /* Everything published goes out before the graceful close. These
         * writes may complete after s is gone, so they carry no subscriber. */
        int lagged = 0, gone = 0;
        struct sub_write *w;
        while (!lagged && (w = subscriber_take_batch(s, SIZE_MAX, SIZE_MAX, &lagged)) != NULL) {
            if (sub_write_send(s->conn, w, NULL) < 0) {
                gone = 1; /* the close callback ran: s is freed and unlinked */
                break;
            }
        }
        if (!gone)
            subscriber_end(s);
    }
    while (h->count)
        log_evict_oldest(h);
    free(h->ring);
    free(h);
}
