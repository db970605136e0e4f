/* store_memory.c: the in-memory store (see store.h). Each log is a ring of
 * frames bounded by --history frames and --history-bytes bytes; the oldest
 * frames are evicted first, and the newest always stays. Appending encodes
 * the event once and hands the frame to the listener before returning.
 *
 * Ownership: a log owns one reference to each frame in its ring; an evicted
 * frame lives on while a subscriber or a write holds a reference. */
#include "store.h"

#include <stdlib.h>
#include <uv.h>

#include "sse.h"

struct memory_log {
    struct store_log base; /* first: a struct store_log * is a struct memory_log * */
    struct frame **ring;   /* ring[(first + i) % capacity], i < count */
    size_t capacity, first, count;
    size_t bytes;          /* bytes of the frames in the ring */
    uint64_t last_seq;     /* seq of the newest frame, 0 when none yet */
    uint64_t run_start_seq; /* first frame of the latest run, 0 when none */
    uint32_t epoch;        /* incarnation: ids of another log are foreign */
    store_listener_cb listener;
    void *listener_arg;
};

static struct store_config config = {.history = 1000, .history_bytes = 1 << 20};
static uint32_t epoch_next;
static int epoch_seeded;
static struct buf encode_scratch;

static void memory_configure(const struct store_config *cfg)
{
    config = *cfg;
}

struct store_log *store_memory_open_cache(uint32_t epoch)
{
    struct memory_log *m = xcalloc(1, sizeof(*m));
    m->base.ops = &store_memory_ops;
    m->epoch = epoch;
    return &m->base;
}

static struct store_log *memory_open(const char *app, const char *user, const char *session)
{
    if (!epoch_seeded) {
        if (uv_random(NULL, NULL, &epoch_next, sizeof(epoch_next), 0, NULL) != 0)
            epoch_next = (uint32_t)(uv_hrtime() ^ (uint64_t)uv_os_getpid());
        epoch_seeded = 1;
    }
    return store_memory_open_cache(epoch_next++);
}

static struct frame *ring_at(const struct memory_log *m, size_t i)
{
    return m->ring[(m->first + i) % m->capacity];
}

static uint64_t ring_oldest_seq(const struct memory_log *m)
{
    return m->count ? ring_at(m, 0)->seq : m->last_seq + 1;
}

static void ring_evict_oldest(struct memory_log *m)
{
    struct frame *f = ring_at(m, 0);
    m->first = (m->first + 1) % m->capacity;
    m->count--;
    m->bytes -= f->len;
    frame_release(f);
}

static void ring_append(struct memory_log *m, struct frame *f)
{
    if (m->count == m->capacity) {
        size_t limit = (size_t)config.history;
        if (m->capacity >= limit) {
            ring_evict_oldest(m);
        } else {
            size_t cap = m->capacity ? m->capacity * 2 : 8;
            if (cap > limit)
                cap = limit;
            struct frame **ring = xmalloc(cap * sizeof(*ring));
            for (size_t i = 0; i < m->count; i++)
                ring[i] = ring_at(m, i);
            free(m->ring);
            m->ring = ring;
            m->capacity = cap;
            m->first = 0;
        }
    }
    m->ring[(m->first + m->count) % m->capacity] = f;
    m->count++;
    m->bytes += f->len;
    /* The newest frame always stays, even if it alone passes history_bytes. */
    while (m->count > 1 && m->bytes > config.history_bytes)
        ring_evict_oldest(m);
}

static void memory_close(struct store_log *log)
{
    struct memory_log *m = (struct memory_log *)log;
    while (m->count)
        ring_evict_oldest(m);
    free(m->ring);
    free(m);
}

void store_memory_restart(struct store_log *log, uint32_t epoch, uint64_t newest_seq,
                          uint64_t run_start_seq)
{
    struct memory_log *m = (struct memory_log *)log;
    while (m->count)
        ring_evict_oldest(m);
    m->epoch = epoch;
    m->last_seq = newest_seq;
    m->run_start_seq = run_start_seq;
}

static void memory_listen(struct store_log *log, store_listener_cb cb, void *arg)
{
    struct memory_log *m = (struct memory_log *)log;
    m->listener = cb;
    m->listener_arg = arg;
}

/* Encodes the event into a frame, retains it in the ring and hands it to
 * the listener. Returns its seq; cannot fail. */
static int64_t memory_put(struct memory_log *m, uint64_t seq, const char *event, const char *data,
                          size_t len, int run_start)
{
    char id[40];
    store_format_id(id, sizeof(id), m->epoch, seq);
    buf_reset(&encode_scratch);
    sse_encode(&encode_scratch, id, event, data, len);
    struct frame *f = frame_new(seq, encode_scratch.data, encode_scratch.len);
    m->last_seq = seq;
    if (run_start)
        m->run_start_seq = seq;
    ring_append(m, f);
    if (m->listener)
        m->listener(m->listener_arg, f);
    return (int64_t)seq;
}

void store_memory_put(struct store_log *log, uint64_t seq, const char *event, const char *data,
                      size_t len, int run_start)
{
    memory_put((struct memory_log *)log, seq, event, data, len, run_start);
}

static void memory_watch(struct store_log *log, const struct store_watch *w, void *arg)
{
    /* One process: nobody else changes its logs. */
}

static int memory_ready(struct store_log *log, const char *last_event_id, store_done_cb done,
                        void *arg)
{
    return 1;
}

static int64_t memory_start_run(struct store_log *log, const char *run_id, const char *event,
                                const char *data, size_t len, store_done_cb done, void *arg)
{
    struct memory_log *m = (struct memory_log *)log;
    int64_t seq = memory_put(m, m->last_seq + 1, event, data, len, 1);
    if (done)
        done(arg, 0);
    return seq;
}

static int64_t memory_append(struct store_log *log, const char *run_id, const char *event,
                             const char *data, size_t len)
{
    struct memory_log *m = (struct memory_log *)log;
    return memory_put(m, m->last_seq + 1, event, data, len, 0);
}

/* Nothing to fence in one process: every terminal is written. */
static int64_t memory_end_run(struct store_log *log, const char *run_id, const char *event,
                              const char *data, size_t len)
{
    int64_t seq = memory_append(log, run_id, event, data, len);
    if (config.on_terminal)
        config.on_terminal(event);
    return seq;
}

static struct frame *memory_read(const struct store_log *log, uint64_t seq)
{
    const struct memory_log *m = (const struct memory_log *)log;
    uint64_t oldest = ring_oldest_seq(m);
    if (seq < oldest || seq > m->last_seq)
        return NULL;
    return ring_at(m, (size_t)(seq - oldest));
}

static void memory_meta(const struct store_log *log, struct store_meta *out)
{
    const struct memory_log *m = (const struct memory_log *)log;
    out->incarnation = m->epoch;
    out->oldest_seq = ring_oldest_seq(m);
    out->newest_seq = m->last_seq;
    out->run_start_seq = m->run_start_seq;
    out->frames = m->count;
    out->bytes = m->bytes;
}

const struct store_ops store_memory_ops = {
    .name = "memory",
    .configure = memory_configure,
    .open = memory_open,
    .close = memory_close,
    .listen = memory_listen,
    .watch = memory_watch,
    .ready = memory_ready,
    .start_run = memory_start_run,
    .append = memory_append,
    .end_run = memory_end_run,
    .read = memory_read,
    .meta = memory_meta,
};
