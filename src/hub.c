/* hub.c: per-session event log and fan-out to SSE subscribers (see hub.h).
 *
 * Ownership: a hub owns its frames (one reference each) and its subscribers.
 * A write in flight owns one more reference to each frame it carries, so a
 * frame evicted from the log stays alive until the kernel has taken it. A
 * subscriber is freed from its connection's close callback; a write that
 * completes after that finds its subscriber pointer cleared.
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
    uint64_t seq;
    uint64_t offset_end; /* bytes published by the hub up to and including this frame */
    size_t len;
    char data[];
};

struct subscriber;

/* One stream write: a batch of frames (or a static keepalive/head) in flight. */
struct sub_write {
    struct subscriber *sub; /* NULL once the subscriber is gone */
    unsigned nframes;
    struct frame *frames[];
};

struct subscriber {
    struct list hub_link; /* in hub->subscribers */
    struct list all_link; /* in the loop-wide list the heartbeat walks */
    struct hub *hub;
    struct conn *conn;
    uint64_t next_seq;      /* next frame to hand to the connection */
    uint64_t handed_offset; /* hub bytes published before next_seq */
    uint64_t join_offset;   /* hub bytes published when it subscribed: the
                               replay backlog is the log's, not this subscriber's */
    struct sub_write *inflight;
    struct frame *preamble; /* bytes for this subscriber only, sent before the next batch */
    int wrote_since_tick;
};

struct hub {
    struct frame **ring; /* the log: ring[(first + i) % capacity], i < count */
    size_t capacity, first, count;
    size_t bytes;        /* bytes of the frames in the log */
    uint64_t last_seq;   /* seq of the newest frame, 0 when none yet */
    uint64_t published_bytes;
    uint64_t run_start_seq; /* first frame of the latest run, 0 when none */
    uint32_t epoch;      /* incarnation: ids from another hub are foreign */
    struct list subscribers;
    size_t subscriber_count;
};

#define HUB_MAX_BATCH 64
#define HUB_MAX_BATCH_BYTES (64 * 1024)

static struct hub_config config;
static uv_timer_t heartbeat_timer;
static struct list all_subscribers;
static size_t total_subscribers;
static size_t total_frames;
static uint64_t dropped[HUB_DROP_REASONS];
static uint32_t epoch_next;
static struct buf encode_scratch;

static const char keepalive_comment[] = ": keepalive\n\n";

static void subscriber_flush(struct subscriber *s);
static void heartbeat_cb(uv_timer_t *t);

void hub_init(uv_loop_t *loop, const struct hub_config *cfg)
{
    config = *cfg;
    list_init(&all_subscribers);
    if (uv_random(NULL, NULL, &epoch_next, sizeof(epoch_next), 0, NULL) != 0)
        epoch_next = (uint32_t)(uv_hrtime() ^ (uint64_t)uv_os_getpid());
    uv_timer_init(loop, &heartbeat_timer);
    uv_unref((uv_handle_t *)&heartbeat_timer);
    if (config.heartbeat_ms > 0)
        uv_timer_start(&heartbeat_timer, heartbeat_cb, config.heartbeat_ms, config.heartbeat_ms);
}

void hub_shutdown(void)
{
    uv_timer_stop(&heartbeat_timer);
    uv_close((uv_handle_t *)&heartbeat_timer, NULL);
    buf_free(&encode_scratch);
}

static void frame_release(struct frame *f)
{
    if (--f->refs == 0) {
        total_frames--;
        free(f);
    }
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
    h->published_bytes += f->len;
    f->offset_end = h->published_bytes;
    h->last_seq = seq;
    if (run_start)
        h->run_start_seq = seq;
    total_frames++;
    log_append(h, f);

    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &h->subscribers)
        subscriber_flush(container_of(pos, struct subscriber, hub_link));
    return seq;
}

/* ---- subscribers ---------------------------------------------------------- */

static void subscriber_drop(struct subscriber *s, enum hub_drop_reason reason)
{
    dropped[reason]++;
    conn_close(s->conn, 0); /* runs subscriber_on_close, which frees s */
}

static void subscriber_on_close(struct conn *c, void *arg)
{
    struct subscriber *s = arg;
    if (s->inflight)
        s->inflight->sub = NULL;
    if (s->hub) {
        list_remove(&s->hub_link);
        s->hub->subscriber_count--;
    }
    list_remove(&s->all_link);
    total_subscribers--;
    if (s->preamble)
        frame_release(s->preamble);
    free(s);
}

static void sub_write_free(struct sub_write *w)
{
    for (unsigned i = 0; i < w->nframes; i++)
        frame_release(w->frames[i]);
    free(w);
}

static void write_done(struct conn *c, void *arg, int status)
{
    struct sub_write *w = arg;
    struct subscriber *s = w->sub;
    sub_write_free(w);
    if (s == NULL)
        return;
    s->inflight = NULL;
    if (status < 0) {
        conn_close(s->conn, 1);
        return;
    }
    if (s->hub)
        subscriber_flush(s);
}

/* Bytes this subscriber still has to receive that sit in runcast: live
 * events published but not yet handed over, plus what libuv could not write
 * to the kernel. */
static uint64_t subscriber_unsent_bytes(const struct subscriber *s)
{
    uint64_t from = s->handed_offset > s->join_offset ? s->handed_offset : s->join_offset;
    return s->hub->published_bytes - from + conn_write_queue_bytes(s->conn);
}

/* Bytes the hub published before seq (seq retained, or last_seq + 1). */
static uint64_t offset_before(const struct hub *h, uint64_t seq)
{
    const struct frame *f = log_find(h, seq);
    return f ? f->offset_end - f->len : h->published_bytes;
}

/* A frame outside the log (seq 0), for bytes sent to one subscriber only. */
static struct frame *frame_private(const char *data, size_t len)
{
    struct frame *f = xmalloc(sizeof(*f) + len);
    f->refs = 1;
    f->seq = 0;
    f->offset_end = 0;
    f->len = len;
    memcpy(f->data, data, len);
    total_frames++;
    return f;
}

/* Takes the preamble and up to max_frames frames (and about max_bytes, at
 * least one frame) from the subscriber's cursor into a new write holding a
 * reference to each. Returns NULL when there is nothing to send. */
static struct sub_write *subscriber_take_batch(struct subscriber *s, uint64_t max_frames,
                                               size_t max_bytes)
{
    struct hub *h = s->hub;
    uint64_t pending = h->last_seq + 1 - s->next_seq;
    if (pending > max_frames)
        pending = max_frames;
    size_t nframes = (size_t)pending + (s->preamble != NULL);
    if (nframes == 0)
        return NULL;
    struct sub_write *w = xmalloc(sizeof(*w) + nframes * sizeof(w->frames[0]));
    w->sub = NULL;
    w->nframes = 0;
    if (s->preamble) {
        w->frames[w->nframes++] = s->preamble;
        s->preamble = NULL;
    }
    size_t bytes = 0;
    for (uint64_t i = 0; i < pending && (i == 0 || bytes < max_bytes); i++) {
        struct frame *f = log_find(h, s->next_seq++);
        f->refs++;
        bytes += f->len;
        w->frames[w->nframes++] = f;
        s->handed_offset = f->offset_end;
    }
    return w;
}

/* Queues w's frames on conn with one vectored write. Returns 0, or a
 * negative errno when the connection is closing (w is then released here). */
static int sub_write_send(struct conn *conn, struct sub_write *w)
{
    uv_buf_t small[HUB_MAX_BATCH + 1];
    uv_buf_t *bufs = w->nframes <= RC_ARRAY_SIZE(small) ? small : xmalloc(w->nframes * sizeof(*bufs));
    for (unsigned i = 0; i < w->nframes; i++)
        bufs[i] = uv_buf_init(w->frames[i]->data, (unsigned)w->frames[i]->len);
    int err = conn_stream_write(conn, bufs, w->nframes, write_done, w);
    if (bufs != small)
        free(bufs);
    return err;
}

/* Hands the next batch to the connection unless a write is in flight (its
 * completion calls back here). Drops the subscriber when it cannot keep up.
 * May free s. */
static void subscriber_flush(struct subscriber *s)
{
    struct hub *h = s->hub;
    if (subscriber_unsent_bytes(s) > config.subscriber_buffer) {
        subscriber_drop(s, HUB_DROP_SLOW);
        return;
    }
    if (s->inflight)
        return;
    if (s->next_seq <= h->last_seq && log_find(h, s->next_seq) == NULL) {
        subscriber_drop(s, HUB_DROP_LAGGED);
        return;
    }
    struct sub_write *w = subscriber_take_batch(s, HUB_MAX_BATCH, HUB_MAX_BATCH_BYTES);
    if (w == NULL)
        return;
    w->sub = s;
    s->inflight = w;
    s->wrote_since_tick = 1;
    int err = sub_write_send(s->conn, w);
    if (err < 0) {
        /* The connection is closing and took nothing: its close callback
         * frees s (or already did, clearing w->sub). */
        if (w->sub)
            w->sub->inflight = NULL;
        sub_write_free(w);
    }
}

static void heartbeat_cb(uv_timer_t *t)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &all_subscribers) {
        struct subscriber *s = container_of(pos, struct subscriber, all_link);
        if (s->hub && !s->wrote_since_tick && !s->inflight) {
            s->preamble = frame_private(keepalive_comment, sizeof(keepalive_comment) - 1);
            subscriber_flush(s);
        }
        s->wrote_since_tick = 0;
    }
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
    if (total_subscribers >= (size_t)config.max_subscribers)
        return -ENOSPC;
    struct subscriber *s = xcalloc(1, sizeof(*s));
    int err = conn_stream_begin(conn, 200,
                                "Content-Type: text/event-stream\r\n"
                                "Cache-Control: no-cache\r\n"
                                "X-Accel-Buffering: no\r\n",
                                0, subscriber_on_close, s);
    if (err < 0) {
        free(s);
        return err;
    }
    s->hub = h;
    s->conn = conn;
    list_insert_tail(&h->subscribers, &s->hub_link);
    list_insert_tail(&all_subscribers, &s->all_link);
    h->subscriber_count++;
    total_subscribers++;

    const char *reset_reason;
    s->next_seq = start_position(h, last_event_id, from_live, &reset_reason);
    s->handed_offset = offset_before(h, s->next_seq);
    s->join_offset = h->published_bytes;

    struct buf pre = {0};
    buf_printf(&pre, "retry: %" PRIu64 "\n\n", config.retry_ms);
    if (reset_reason) {
        char data[128];
        int n = snprintf(data, sizeof(data), "{\"reason\":\"%s\"}", reset_reason);
        sse_encode(&pre, NULL, "stream.reset", data, (size_t)n);
    }
    s->preamble = frame_private(pre.data, pre.len);
    buf_free(&pre);
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
        /* Everything published goes out before the graceful close; this
         * write completes after s is gone, so it carries no subscriber. */
        struct sub_write *w = subscriber_take_batch(s, UINT64_MAX, SIZE_MAX);
        if (w && sub_write_send(s->conn, w) < 0)
            sub_write_free(w);
        list_remove(&s->hub_link);
        s->hub = NULL;
        conn_close(s->conn, 0);
    }
    while (h->count)
        log_evict_oldest(h);
    free(h->ring);
    free(h);
}
