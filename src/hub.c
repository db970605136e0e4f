/* hub.c: fan-out of a session's frames to its subscribers (see hub.h).
 *
 * Ownership: the log (store.h) owns the frames it retains; a subscriber
 * owns one reference to each frame queued for it, and a write in flight one
 * more to each frame it carries, so a frame evicted from the log stays
 * alive until the transport has taken it. A subscriber is freed by
 * hub_unsubscribe() (its transport went away: a cut, a write error, the
 * client leaving) or by subscriber_end() (a normal end, which lets go of the
 * transport); a write that completes after that finds its subscriber
 * pointer cleared.
 */
#include "hub.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "sse.h"
#include "store.h"

struct subscriber;

/* One stream write in flight: the frames it carries, one reference each. */
struct sub_write {
    struct list link;       /* in sub->writes while the subscriber lives */
    struct subscriber *sub; /* NULL once the subscriber is gone */
    unsigned nframes;
    struct frame *frames[];
};

/* A subscriber is a cursor into its hub's log plus the frames it has been
 * given but not yet handed to its transport. While it replays, it reads
 * from the log; once caught up, every publish gives it a reference at once,
 * so eviction from the log can never make a live subscriber miss an event. */
struct subscriber {
    struct list hub_link; /* in hub->subscribers */
    struct list all_link; /* in all_subscribers, ordered by last_write_ms */
    struct hub *hub;      /* never NULL: hub_destroy() ends every stream first */
    const struct subscriber_ops *ops;
    void *transport;
    uint64_t next_seq;    /* next frame this subscriber needs */
    struct frame **queue; /* referenced, not yet handed to the transport */
    unsigned queued, queue_cap;
    size_t queued_bytes;
    struct list writes;   /* struct sub_write in flight; a completion is "proceed" */
    struct list dirty_link; /* in dirty_subscribers while it has frames to flush */
    uint64_t last_write_ms; /* uv_now() when bytes were last handed to its transport */
    uint64_t deadline_ms; /* 0: none; else it sits in the deadline heap */
    size_t heap_index;    /* its place in the deadline heap */
    void (*on_leave)(void *arg);
    void *leave_arg;
    struct frame *(*view)(void *arg, struct frame *f, int *end); /* hub.h */
    void *view_arg;
    int ending; /* the view ended the stream: it ends once its queue is sent */
    struct frame *keepalive; /* its heartbeat (borrowed, hub.h) */
};

struct hub {
    struct store_log *log; /* not owned: the session's, outlives the hub */
    uint64_t newest_seq;   /* seq of the newest frame the log handed over */
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
/* An append only queues frames; these two flush every subscriber that got
 * some once per loop iteration (see hub_on_frame). */
static uv_check_t flush_check;
static uv_idle_t flush_idle;
static struct list dirty_subscribers;
static size_t total_subscribers;
static uint64_t dropped[HUB_DROP_REASONS];

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

/* A frame outside the log, for bytes sent to one subscriber only. */
static struct frame *frame_private(const char *data, size_t len)
{
    return frame_new(0, data, len);
}

void hub_init(uv_loop_t *loop, const struct hub_config *cfg)
{
    config = *cfg;
    hub_loop = loop;
    list_init(&all_subscribers);
    list_init(&dirty_subscribers);
    uv_check_init(loop, &flush_check);
    uv_idle_init(loop, &flush_idle);
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
    frame_release(keepalive_frame);
    keepalive_frame = NULL;
}

static void hub_on_frame(void *arg, struct frame *f);

struct hub *hub_create(struct store_log *log)
{
    struct hub *h = xcalloc(1, sizeof(*h));
    struct store_meta m;
    store_meta(log, &m);
    h->log = log;
    h->newest_seq = m.newest_seq;
    list_init(&h->subscribers);
    store_listen(log, hub_on_frame, h);
    return h;
}

/* The log's listener: a frame was appended. Subscribers only queue a
 * reference here; the frames go out when the loop iteration ends
 * (flush_dirty), one vectored write per subscriber for everything appended
 * meanwhile. An upstream read carries many events when the loop is busy,
 * so under load a write carries many frames and the syscalls per event
 * fall instead of the loop falling behind (one write per event per
 * subscriber was what capped fan-out). */
static void hub_on_frame(void *arg, struct frame *f)
{
    struct hub *h = arg;
    h->newest_seq = f->seq;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &h->subscribers)
        subscriber_offer(container_of(pos, struct subscriber, hub_link), f);
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
    s->ops->cut(s->transport, 0); /* the transport calls hub_unsubscribe(), which frees s */
}

static void sub_write_free(struct sub_write *w)
{
    for (unsigned i = 0; i < w->nframes; i++)
        frame_release(w->frames[i]);
    free(w);
}

/* Forgets s everywhere and frees it; writes in flight lose their
 * subscriber pointer (their frames are released when they complete). Cannot
 * fail. Called once: by the transport when it goes away, or by
 * subscriber_end() for a stream that ends normally. */
void hub_unsubscribe(struct subscriber *s)
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

/* Ends s's stream normally, after what was already handed to its
 * transport (for an HTTP stream: the last chunk, and the connection serves
 * the next request). Frees s. */
static void subscriber_end(struct subscriber *s)
{
    const struct subscriber_ops *ops = s->ops;
    void *transport = s->transport;
    hub_unsubscribe(s);
    ops->end(transport);
}

/* s handed bytes to its transport now: it goes to the tail of the
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
    frame_retain(f);
    s->queue[s->queued++] = f;
    s->queued_bytes += f->len;
}

/* Gives f to s's view; returns what to send (a new reference) or NULL. */
static struct frame *view_apply(struct subscriber *s, struct frame *f)
{
    int end = 0;
    struct frame *out = s->view(s->view_arg, f, &end);
    if (end)
        s->ending = 1;
    return out;
}

/* A view subscriber's replay: reads the log through its view into its
 * queue until it produced max_frames or about max_bytes, caught up, or
 * the view ended the stream. A frame the view skips costs a look, not a
 * write, so a view reads past any number of them (bounded by the log). */
static void view_replay(struct subscriber *s, size_t max_frames, size_t max_bytes)
{
    struct hub *h = s->hub;
    size_t produced = 0;
    while (!s->ending && s->next_seq <= h->newest_seq && produced < max_frames &&
           s->queued_bytes < max_bytes) {
        struct frame *f = store_read(h->log, s->next_seq);
        if (f == NULL)
            return; /* evicted: the next batch reports it lagged */
        s->next_seq++;
        struct frame *out = view_apply(s, f);
        if (out) {
            subscriber_enqueue(s, out);
            frame_release(out);
            produced++;
        }
    }
}

/* Bytes this subscriber still has to receive that sit in runcast: frames
 * given to it but not handed over, plus what its transport could not write
 * (to the kernel). The replay backlog is not counted: it is the log's, not
 * a copy. */
static size_t subscriber_unsent_bytes(const struct subscriber *s)
{
    return s->queued_bytes + s->ops->pending(s->transport);
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
    uint64_t behind = h->newest_seq + 1 - s->next_seq;
    *lagged = behind > 0 && store_read(h->log, s->next_seq) == NULL;
    if (*lagged)
        return NULL;
    if (s->view) {
        view_replay(s, max_frames, max_bytes);
        behind = 0; /* what it did not read stays for the next batch */
    }
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
        struct frame *f = store_read(h->log, s->next_seq++);
        frame_retain(f);
        bytes += f->len;
        w->frames[w->nframes++] = f;
    }
    return w;
}

/* Sends w's frames with one vectored send of s's transport: what it takes
 * at once is written and w is freed; the rest, if any, is queued and w
 * stays alive, carrying owner (NULL: a write no subscriber waits for, as
 * at a normal end), until hub_write_done(). Returns 1 when all was written,
 * 0 when some was queued, or a negative errno when the transport is going
 * away (w is then freed here, and hub_unsubscribe(s) has run or will run). */
static int sub_write_send(struct subscriber *s, struct sub_write *w, struct subscriber *owner)
{
    uv_buf_t small[HUB_MAX_BATCH + 2];
    uv_buf_t *bufs = w->nframes <= RC_ARRAY_SIZE(small) ? small : xmalloc(w->nframes * sizeof(*bufs));
    for (unsigned i = 0; i < w->nframes; i++)
        bufs[i] = uv_buf_init(w->frames[i]->data, (unsigned)w->frames[i]->len);
    w->sub = owner;
    if (owner)
        list_insert_tail(&owner->writes, &w->link);
    int rc = s->ops->send(s->transport, bufs, w->nframes, w);
    if (rc != 0)
        list_remove(&w->link); /* a no-op when hub_unsubscribe() unlinked it */
    if (bufs != small)
        free(bufs);
    if (rc != 0)
        sub_write_free(w);
    return rc;
}

/* Hands what the subscriber has to send to its transport, unless the
 * transport is backed up (it holds bytes its peer has not taken): then the
 * completion of the queued write calls back here. A replaying
 * subscriber writes at most HUB_FLUSH_BUDGET bytes per loop iteration and
 * continues in the next one, so one long replay cannot starve the others.
 * Returns -1 when s is gone (a lagging subscriber is dropped; a write error
 * closes it), else 0. */
static int subscriber_flush(struct subscriber *s)
{
    if (!list_empty(&s->writes) && s->ops->pending(s->transport) > 0)
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
        if (w == NULL) {
            if (s->ending && list_empty(&s->writes)) {
                subscriber_end(s); /* its view ended it, and all is sent */
                return -1;
            }
            return 0;
        }
        size_t bytes = 0;
        for (unsigned i = 0; i < w->nframes; i++)
            bytes += w->frames[i]->len;
        int rc = sub_write_send(s, w, s);
        if (rc < 0)
            return -1;
        subscriber_touch(s);
        if (rc == 0)
            return 0; /* queued: hub_write_done() proceeds */
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
    if (config.flush_begin)
        config.flush_begin();
    while (!list_empty(&batch)) {
        struct subscriber *s = container_of(batch.next, struct subscriber, dirty_link);
        list_remove(&s->dirty_link);
        subscriber_flush(s); /* may free s, which is unlinked already */
    }
    if (config.flush_end)
        config.flush_end(); /* completions: hub_write_done() for each send */
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

void hub_write_done(void *write, int status)
{
    struct sub_write *w = write;
    struct subscriber *s = w->sub;
    list_remove(&w->link);
    sub_write_free(w);
    if (s == NULL)
        return;
    if (status < 0)
        s->ops->cut(s->transport, 1);
    else
        subscriber_flush(s);
}

/* Gives a newly published frame to a subscriber that is caught up, and
 * drops the subscriber when its unsent bytes pass the buffer. */
static void subscriber_offer(struct subscriber *s, struct frame *f)
{
    if (s->next_seq == f->seq) {
        s->next_seq++;
        struct frame *out = s->view ? (s->ending ? NULL : view_apply(s, f)) : f;
        if (out)
            subscriber_enqueue(s, out);
        if (out && s->view)
            frame_release(out);
    }
    /* A burst bigger than the buffer within one loop iteration: offer it to
     * the socket now rather than at the end of the iteration, since the
     * rule below is about bytes the kernel refused. */
    if (s->queued_bytes > config.subscriber_buffer && subscriber_flush(s) < 0)
        return;
    /* Only a transport that is backed up can be too slow: bytes queued in
     * one loop iteration for a socket that takes everything are in transit. */
    if (s->ops->pending(s->transport) > 0 &&
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

/* Keepalives sent per loop iteration at most: tens of thousands of streams
 * opened together fall due together, and one burst of sends would hold up
 * every live event behind it (a probe's p99 rose from 4 ms to 340 ms with
 * 95,000 idle streams over five nodes on two cores). */
#define HEARTBEAT_BATCH 256

/* Sends `: keepalive` to every stream silent for heartbeat_ms, or that
 * would be within an eighth of it (coalescing: one wake-up serves streams
 * whose deadlines are close; an early keepalive costs a few bytes), at most
 * HEARTBEAT_BATCH per call: the rest follow in the next loop iteration,
 * after its I/O. A stream whose bytes are still queued is not silent on
 * our side: it only moves to the tail. */
static void heartbeat_cb(uv_timer_t *t)
{
    if (config.heartbeat_ms == 0)
        return;
    uint64_t horizon = uv_now(hub_loop) + config.heartbeat_ms / 8;
    for (int sent = 0; !list_empty(&all_subscribers) && sent < HEARTBEAT_BATCH; sent++) {
        struct subscriber *s = container_of(all_subscribers.next, struct subscriber, all_link);
        if (s->last_write_ms + config.heartbeat_ms > horizon)
            break;
        if (list_empty(&s->writes) && s->queued == 0) {
            subscriber_enqueue(s, s->keepalive);
            if (subscriber_flush(s) < 0)
                continue; /* a write error closed it: s is gone */
        }
        if (all_subscribers.next == &s->all_link)
            subscriber_touch(s);
    }
    heartbeat_arm();
}

/* Ends a stream whose deadline passed: what it was already handed goes out,
 * then a stream.closed without an id line, then a normal end. Frames it
 * has not been handed yet (a replay under way) are not sent: the client
 * resumes after the last id it got, so nothing is lost. Frees s. */
static void subscriber_expire(struct subscriber *s)
{
    static const char closing[] = "event: stream.closed\ndata: {\"reason\":\"token_expired\"}\n\n";
    struct frame *f = frame_private(closing, sizeof(closing) - 1);
    subscriber_enqueue(s, f);
    frame_release(f);
    int lagged;
    struct sub_write *w = subscriber_take_batch(s, 0, 0, &lagged);
    /* Sent without a subscriber: its completion may come after s is gone.
     * A failed send cut the transport and freed s already. */
    if (w != NULL && sub_write_send(s, w, NULL) < 0)
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

int hub_has_room(void)
{
    return total_subscribers < (size_t)config.max_subscribers;
}

int hub_subscribe(struct hub *h, const struct subscriber_ops *ops, void *transport,
                  const struct hub_subscribe_options *opt, struct subscriber **out)
{
    if (!hub_has_room())
        return -ENOSPC;
    struct subscriber *s = xcalloc(1, sizeof(*s));
    *out = s;
    s->hub = h;
    s->ops = ops;
    s->transport = transport;
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

    s->on_leave = opt->on_leave;
    s->leave_arg = opt->leave_arg;
    s->keepalive = opt->keepalive ? opt->keepalive : keepalive_frame;
    if (opt->view) {
        struct store_meta m;
        store_meta(h->log, &m);
        s->next_seq = m.oldest_seq;
        s->view = opt->view;
        s->view_arg = opt->view_arg;
        subscriber_flush(s); /* may free s */
        return 0;
    }
    const char *reset_reason;
    s->next_seq = store_locate(h->log, opt->last_event_id, opt->from_live, &reset_reason);
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
    if (opt->deadline_ms) {
        s->deadline_ms = opt->deadline_ms;
        deadline_insert(s);
    }
    subscriber_flush(s); /* may free s: a failed send unsubscribes it */
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

uint64_t hub_dropped_total(enum hub_drop_reason reason)
{
    return dropped[reason];
}

void hub_reset(struct hub *h)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &h->subscribers) {
        struct subscriber *s = container_of(pos, struct subscriber, hub_link);
        s->ops->cut(s->transport, 0); /* the transport unsubscribes s */
    }
    struct store_meta m;
    store_meta(h->log, &m);
    h->newest_seq = m.newest_seq;
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
            if (sub_write_send(s, w, NULL) < 0) {
                gone = 1; /* hub_unsubscribe() ran: s is freed and unlinked */
                break;
            }
        }
        if (!gone)
            subscriber_end(s);
    }
    store_listen(h->log, NULL, NULL);
    free(h);
}
