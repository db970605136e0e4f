/* store.c: what every store shares (see store.h): frames, ids, the replay
 * position of a new subscriber, and which store store_open() uses. */
#include "store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static const struct store_ops *store_ops = &store_memory_ops;
static size_t frames_alive;

int frame_parse(const struct frame *f, struct frame_parts *out)
{
    const char *p = f->data, *end = f->data + f->len;
    memset(out, 0, sizeof(*out));
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL || eol == p)
            break; /* the blank line ends the event */
        size_t n = (size_t)(eol - p);
        if (n >= 4 && memcmp(p, "id: ", 4) == 0 && out->data == NULL) {
            out->id = p + 4;
            out->id_len = n - 4;
        } else if (n >= 7 && memcmp(p, "event: ", 7) == 0 && out->data == NULL) {
            out->type = p + 7;
            out->type_len = n - 7;
        } else if (n >= 5 && memcmp(p, "data:", 5) == 0) {
            if (out->data == NULL)
                out->data = p;
            out->data_end = eol + 1;
        }
        p = eol + 1;
    }
    return out->type && out->data ? 0 : -EINVAL;
}

struct frame *frame_new(uint64_t seq, const char *data, size_t len)
{
    struct frame *f = xmalloc(sizeof(*f) + len);
    f->refs = 1;
    f->seq = seq;
    f->len = len;
    memcpy(f->data, data, len);
    frames_alive++;
    return f;
}

void frame_release(struct frame *f)
{
    if (--f->refs == 0) {
        frames_alive--;
        free(f);
    }
}

size_t frame_count(void)
{
    return frames_alive;
}

void store_init(const struct store_ops *ops, const struct store_config *cfg)
{
    store_ops = ops;
    ops->configure(cfg);
}

struct store_log *store_open(const char *app, const char *user, const char *session)
{
    return store_ops->open(app, user, session);
}

const char *store_name(void)
{
    return store_ops->name;
}

int store_is_shared(void)
{
    return store_ops->shared;
}

void store_format_id(char *out, size_t size, uint32_t incarnation, uint64_t seq)
{
    if (size < STORE_ID_MAX) {
        snprintf(out, size, "%08" PRIx32 "-%" PRIu64, incarnation, seq);
        return;
    }
    size_t n = fmt_hex32(out, incarnation);
    out[n++] = '-';
    n += fmt_u64(out + n, seq);
    out[n] = '\0';
}

int store_parse_id(const char *id, uint32_t *incarnation, uint64_t *seq)
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
    *incarnation = (uint32_t)strtoul(id, NULL, 16);
    *seq = v;
    return 0;
}

int store_event_id_incarnation(const char *id, uint32_t *out)
{
    uint64_t seq;
    return store_parse_id(id, out, &seq);
}

uint64_t store_locate(const struct store_log *log, const char *last_event_id, int from_live,
                      const char **reset_reason)
{
    struct store_meta m;
    store_meta(log, &m);
    *reset_reason = NULL;
    if (last_event_id != NULL) {
        uint32_t incarnation;
        uint64_t seq;
        if (store_parse_id(last_event_id, &incarnation, &seq) < 0 || incarnation != m.incarnation ||
            seq > m.newest_seq) {
            *reset_reason = "unknown_event_id";
            return m.oldest_seq;
        }
        if (seq + 1 < m.oldest_seq) {
            *reset_reason = "event_id_evicted";
            return m.oldest_seq;
        }
        return seq + 1;
    }
    if (from_live || m.run_start_seq == 0)
        return m.newest_seq + 1;
    if (m.run_start_seq < m.oldest_seq) {
        *reset_reason = "run_start_evicted";
        return m.oldest_seq;
    }
    return m.run_start_seq;
}
