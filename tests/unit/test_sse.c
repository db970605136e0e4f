/* test_sse.c: the SSE encoder's exact bytes and the incremental parser against
 * the WHATWG "interpreting an event stream" rules, whole and split anywhere. */
#include "../../src/sse.h"
#include "test.h"

#include <stdlib.h>

/* ---- recording dispatched events -------------------------------------- */

#define MAX_RECORDED 64

/* Each event is recorded as "<event>|<id>|<data>" (the test streams keep '|'
 * out of their fields, so the string names the event exactly). */
struct recorder {
    struct buf events[MAX_RECORDED];
    int count;
    int stop_after; /* return stop_value from the stop_after-th event; 0: never */
    int stop_value;
};

static int record_cb(void *arg, const struct sse_event *ev)
{
    struct recorder *r = arg;
    CHECK(r->count < MAX_RECORDED);
    if (r->count >= MAX_RECORDED)
        return -1;
    /* The pointers are NUL-terminated at their lengths. */
    CHECK_EQ(ev->event[ev->event_len], '\0');
    CHECK_EQ(ev->data[ev->data_len], '\0');
    CHECK_EQ(ev->id[ev->id_len], '\0');
    struct buf *b = &r->events[r->count++];
    buf_append(b, ev->event, ev->event_len);
    buf_append(b, "|", 1);
    buf_append(b, ev->id, ev->id_len);
    buf_append(b, "|", 1);
    buf_append(b, ev->data, ev->data_len);
    if (r->stop_after > 0 && r->count == r->stop_after)
        return r->stop_value;
    return 0;
}

static void recorder_free(struct recorder *r)
{
    for (int i = 0; i < MAX_RECORDED; i++)
        buf_free(&r->events[i]);
    memset(r, 0, sizeof(*r));
}

/* Parses text in one feed; returns the feed's result. */
static int parse_all(struct recorder *r, const char *text, size_t max_event_bytes,
                     int *has_partial)
{
    struct sse_parser p;
    sse_parser_init(&p, max_event_bytes);
    int rc = sse_parser_feed(&p, text, strlen(text), record_cb, r);
    if (has_partial)
        *has_partial = sse_parser_has_partial(&p);
    sse_parser_free(&p);
    return rc;
}

static void check_same_events(const struct recorder *got, const struct recorder *want)
{
    CHECK_EQ(got->count, want->count);
    for (int i = 0; i < got->count && i < want->count; i++)
        CHECK_MEMEQ(got->events[i].data, got->events[i].len, want->events[i].data);
}

/* ---- encoder ----------------------------------------------------------- */

static void encode_with_id_and_event_writes_exact_frame(void)
{
    struct buf out = {0};
    size_t n = sse_encode(&out, "42", "run.started", "{\"a\":1}", 7);
    const char *want = "id: 42\nevent: run.started\ndata: {\"a\":1}\n\n";
    CHECK_MEMEQ(out.data, out.len, want);
    CHECK_EQ(n, strlen(want));
    buf_free(&out);
}

static void encode_without_id_or_event_leaves_those_lines_out(void)
{
    struct buf out = {0};
    buf_append_str(&out, "prefix");
    size_t n = sse_encode(&out, NULL, NULL, "x", 1);
    CHECK_MEMEQ(out.data, out.len, "prefixdata: x\n\n");
    CHECK_EQ(n, strlen("data: x\n\n")); /* only the bytes appended */

    buf_reset(&out);
    sse_encode(&out, "7", NULL, "x", 1);
    CHECK_MEMEQ(out.data, out.len, "id: 7\ndata: x\n\n");

    buf_reset(&out);
    sse_encode(&out, NULL, "e", "x", 1);
    CHECK_MEMEQ(out.data, out.len, "event: e\ndata: x\n\n");
    buf_free(&out);
}

static void encode_splits_multiline_data_into_data_lines(void)
{
    struct buf out = {0};
    sse_encode(&out, NULL, NULL, "a\nbb\n\nc", 7);
    CHECK_MEMEQ(out.data, out.len, "data: a\ndata: bb\ndata: \ndata: c\n\n");

    buf_reset(&out);
    sse_encode(&out, NULL, NULL, "a\n", 2); /* a trailing LF is an empty last line */
    CHECK_MEMEQ(out.data, out.len, "data: a\ndata: \n\n");

    buf_reset(&out);
    sse_encode(&out, NULL, NULL, " lead", 5); /* the parser drops only our space */
    CHECK_MEMEQ(out.data, out.len, "data:  lead\n\n");
    buf_free(&out);
}

static void encode_treats_crlf_and_lone_cr_as_line_ends(void)
{
    struct buf out = {0};
    sse_encode(&out, NULL, NULL, "a\r\nb\rc\r\r\nd\r", 11);
    CHECK_MEMEQ(out.data, out.len,
                "data: a\ndata: b\ndata: c\ndata: \ndata: d\ndata: \n\n");
    buf_free(&out);
}

static void encode_empty_data_is_one_empty_data_line(void)
{
    struct buf out = {0};
    sse_encode(&out, NULL, NULL, "", 0);
    CHECK_MEMEQ(out.data, out.len, "data: \n\n");
    buf_reset(&out);
    sse_encode(&out, NULL, NULL, NULL, 0);
    CHECK_MEMEQ(out.data, out.len, "data: \n\n");
    buf_free(&out);
}

static void encode_strips_cr_and_lf_from_id_and_event(void)
{
    struct buf out = {0};
    sse_encode(&out, "1\n\ndata: evil", "a\r\nb\rc\n", "x", 1);
    CHECK_MEMEQ(out.data, out.len, "id: 1data: evil\nevent: abc\ndata: x\n\n");
    buf_free(&out);
}

/* ---- parser ------------------------------------------------------------ */

static void parser_dispatches_one_event(void)
{
    struct recorder r = {0};
    int partial = -1;
    CHECK_EQ(parse_all(&r, "id: 5\nevent: run.started\ndata: {}\n\n", 1024, &partial), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "run.started|5|{}");
    CHECK_EQ(partial, 0);
    recorder_free(&r);
}

static void parser_dispatches_several_events_from_one_feed(void)
{
    struct recorder r = {0};
    CHECK_EQ(parse_all(&r, "data: a\n\nevent: e\ndata: b\n\ndata: c\n\n", 1024, NULL), 0);
    CHECK_EQ(r.count, 3);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||a");
    CHECK_MEMEQ(r.events[1].data, r.events[1].len, "e||b");
    CHECK_MEMEQ(r.events[2].data, r.events[2].len, "message||c"); /* event type reset */
    recorder_free(&r);
}

static void parser_interprets_whole_lines_in_place(void)
{
    /* A chunk of complete lines never goes through the line buffer. */
    struct recorder r = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    const char *text = "data: a\n\ndata: b\r\n\r\n";
    CHECK_EQ(sse_parser_feed(&p, text, strlen(text), record_cb, &r), 0);
    CHECK_EQ(r.count, 2);
    CHECK(p.line.data == NULL);
    CHECK_EQ(p.line.cap, 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

/* One stream using every rule: a BOM, CRLF, CR and LF line ends, comments,
 * multi-line data, an id that persists, an event type reset by a blank line
 * without data, an empty id, and a trailing event that is never finished. */
static const char split_stream[] =
    "\xEF\xBB\xBF: leading comment\r\n"
    "id: 1\r\n"
    "event: greet\r\n"
    "data: hello\r\n"
    "data:  world\r\n"
    "\r\n"
    "data: no id change\r"
    "\r"
    ": comment\n"
    "event: other\n"
    "data\n"
    "retry: 10\n"
    "unknown: x\n"
    "\n"
    "id: 7\n"
    "event: skipped\n"
    "\n"
    "data: after\r\n"
    "data:\r"
    "\r\n"
    "id\n"
    "data: x\n"
    "\n"
    "data: trailing partial";

static const char *const split_stream_events[] = {
    "greet|1|hello\n world",
    "message|1|no id change",
    "other|1|",
    "message|7|after\n",
    "message||x",
};

static void parser_one_shot_gives_expected_events(void)
{
    struct recorder r = {0};
    int partial = 0;
    CHECK_EQ(parse_all(&r, split_stream, 1024, &partial), 0);
    CHECK_EQ(r.count, (int)RC_ARRAY_SIZE(split_stream_events));
    for (int i = 0; i < r.count && i < (int)RC_ARRAY_SIZE(split_stream_events); i++)
        CHECK_MEMEQ(r.events[i].data, r.events[i].len, split_stream_events[i]);
    CHECK_EQ(partial, 1);
    recorder_free(&r);
}

/* Feeds text cut at the given sorted positions. */
static void parse_pieces(struct recorder *r, const char *text, size_t len,
                         const size_t *cuts, int ncuts, int *has_partial)
{
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    size_t from = 0;
    for (int i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        CHECK_EQ(sse_parser_feed(&p, text + from, to - from, record_cb, r), 0);
        from = to;
    }
    *has_partial = sse_parser_has_partial(&p);
    sse_parser_free(&p);
}

static void parser_split_at_every_position_matches_one_shot(void)
{
    size_t len = strlen(split_stream);
    struct recorder want = {0};
    parse_all(&want, split_stream, 1024, NULL);

    for (size_t cut = 0; cut <= len; cut++) {
        struct recorder got = {0};
        int partial = 0;
        parse_pieces(&got, split_stream, len, &cut, 1, &partial);
        check_same_events(&got, &want);
        CHECK_EQ(partial, 1);
        recorder_free(&got);
    }
    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            struct recorder got = {0};
            size_t cuts[2] = { a, b };
            int partial = 0;
            parse_pieces(&got, split_stream, len, cuts, 2, &partial);
            if (got.count != want.count)
                fprintf(stderr, "  cuts at %zu and %zu\n", a, b);
            check_same_events(&got, &want);
            CHECK_EQ(partial, 1);
            recorder_free(&got);
        }
    }
    recorder_free(&want);
}

static void parser_fed_one_byte_at_a_time_matches_one_shot(void)
{
    size_t len = strlen(split_stream);
    struct recorder want = {0}, got = {0};
    parse_all(&want, split_stream, 1024, NULL);

    size_t *cuts = xmalloc(len * sizeof(*cuts));
    for (size_t i = 0; i < len; i++)
        cuts[i] = i;
    int partial = 0;
    parse_pieces(&got, split_stream, len, cuts, (int)len, &partial);
    check_same_events(&got, &want);
    CHECK_EQ(partial, 1);
    free(cuts);
    recorder_free(&want);
    recorder_free(&got);
}

static void parser_cr_ending_a_feed_and_lf_starting_the_next_are_one_line_end(void)
{
    struct recorder r = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    CHECK_EQ(sse_parser_feed(&p, "data: a\r", 8, record_cb, &r), 0);
    CHECK_EQ(p.last_was_cr, 1);
    CHECK_EQ(sse_parser_feed(&p, "\ndata: b\r", 9, record_cb, &r), 0);
    CHECK_EQ(sse_parser_feed(&p, "\n", 1, record_cb, &r), 0);
    CHECK_EQ(r.count, 0); /* had an LF been a blank line, "a" would be out */
    CHECK_EQ(sse_parser_feed(&p, "\r", 1, record_cb, &r), 0);
    CHECK_EQ(r.count, 1);
    CHECK_EQ(sse_parser_feed(&p, "\n", 1, record_cb, &r), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||a\nb");
    CHECK_EQ(sse_parser_has_partial(&p), 0);
    CHECK_EQ(p.last_was_cr, 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void parser_cr_ending_a_feed_then_other_byte_starts_a_line(void)
{
    struct recorder r = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    CHECK_EQ(sse_parser_feed(&p, "data: a\r", 8, record_cb, &r), 0);
    CHECK_EQ(sse_parser_feed(&p, "data: b\r", 8, record_cb, &r), 0);
    CHECK_EQ(r.count, 0);
    CHECK_EQ(sse_parser_feed(&p, "\r", 1, record_cb, &r), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||a\nb");
    sse_parser_free(&p);
    recorder_free(&r);
}

static void parser_skips_bom_only_at_stream_start(void)
{
    struct recorder r = {0};
    CHECK_EQ(parse_all(&r, "\xEF\xBB\xBF" "data: a\n\n\xEF\xBB\xBF" "data: b\n\n", 1024, NULL), 0);
    CHECK_EQ(r.count, 1); /* the second BOM makes an unknown field name */
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||a");
    recorder_free(&r);

    /* Two BOMs: only the first is skipped. */
    CHECK_EQ(parse_all(&r, "\xEF\xBB\xBF\xEF\xBB\xBF" "data: a\n\n", 1024, NULL), 0);
    CHECK_EQ(r.count, 0);
    recorder_free(&r);
}

static void parser_keeps_a_partial_bom_that_turns_out_not_to_be_one(void)
{
    struct recorder r = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    CHECK_EQ(sse_parser_feed(&p, "\xEF", 1, record_cb, &r), 0);
    CHECK_EQ(sse_parser_feed(&p, "\xBB", 1, record_cb, &r), 0);
    CHECK_EQ(sse_parser_has_partial(&p), 1);
    CHECK_EQ(sse_parser_feed(&p, "X", 1, record_cb, &r), 0);
    CHECK_MEMEQ(p.line.data, p.line.len, "\xEF\xBBX");
    CHECK_EQ(sse_parser_feed(&p, ": y\n\ndata: z\n\n", 14, record_cb, &r), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||z");
    sse_parser_free(&p);
    recorder_free(&r);
}

static void parser_data_with_empty_value_dispatches_empty_data(void)
{
    struct recorder r = {0};
    CHECK_EQ(parse_all(&r, "data:\n\ndata: \n\ndata:\ndata:\n\n", 1024, NULL), 0);
    CHECK_EQ(r.count, 3);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||");
    CHECK_MEMEQ(r.events[1].data, r.events[1].len, "message||");
    CHECK_MEMEQ(r.events[2].data, r.events[2].len, "message||\n");
    recorder_free(&r);
}

static void parser_line_without_colon_is_field_with_empty_value(void)
{
    struct recorder r = {0};
    CHECK_EQ(parse_all(&r, "data\ndata\n\nevent: e\nevent\ndata: x\n\n", 1024, NULL), 0);
    CHECK_EQ(r.count, 2);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||\n");
    CHECK_MEMEQ(r.events[1].data, r.events[1].len, "message||x"); /* "event" emptied it */
    recorder_free(&r);
}

static void parser_removes_exactly_one_space_after_colon(void)
{
    struct recorder r = {0};
    CHECK_EQ(parse_all(&r,
                       "data:x\n\ndata: x\n\ndata:  x\n\ndata:\tx\n\ndata: a:b\n\n"
                       "data \n\n",
                       1024, NULL), 0);
    CHECK_EQ(r.count, 5);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||x");
    CHECK_MEMEQ(r.events[1].data, r.events[1].len, "message||x");
    CHECK_MEMEQ(r.events[2].data, r.events[2].len, "message|| x");
    CHECK_MEMEQ(r.events[3].data, r.events[3].len, "message||\tx");
    CHECK_MEMEQ(r.events[4].data, r.events[4].len, "message||a:b");
    /* "data " (no colon) is a field named "data " and ignored. */
    recorder_free(&r);
}

static void parser_ignores_retry_unknown_fields_and_comments(void)
{
    struct recorder r = {0};
    CHECK_EQ(parse_all(&r,
                       "retry: 1000\nretry: abc\nfoo: bar\nData: no\nDATA: no\n"
                       ": a comment\n:\ndata: x\n\nretry: 5\n\n: only\n\n",
                       1024, NULL), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||x");
    recorder_free(&r);
}

static void parser_does_not_dispatch_without_data_but_keeps_id(void)
{
    struct recorder r = {0};
    int partial = -1;
    CHECK_EQ(parse_all(&r, "id: 3\nevent: e\n\ndata: x\n\n", 1024, &partial), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message|3|x");
    CHECK_EQ(partial, 0);
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "event: e\n\n\n\n", 1024, &partial), 0);
    CHECK_EQ(r.count, 0);
    CHECK_EQ(partial, 0);
    recorder_free(&r);
}

static void parser_ignores_id_containing_nul(void)
{
    static const char text[] = "id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\nid\ndata: c\n\n";
    struct recorder r = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    CHECK_EQ(sse_parser_feed(&p, text, sizeof(text) - 1, record_cb, &r), 0);
    CHECK_EQ(r.count, 3);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message|1|a");
    CHECK_MEMEQ(r.events[1].data, r.events[1].len, "message|1|b");
    CHECK_MEMEQ(r.events[2].data, r.events[2].len, "message||c"); /* empty id resets */
    sse_parser_free(&p);
    recorder_free(&r);
}

static void parser_passes_nul_in_data_through(void)
{
    static const char text[] = "data: a\0b\n\n";
    struct recorder r = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    CHECK_EQ(sse_parser_feed(&p, text, sizeof(text) - 1, record_cb, &r), 0);
    CHECK_EQ(r.count, 1);
    CHECK_EQ(r.events[0].len, strlen("message||a") + 2);
    CHECK(memcmp(r.events[0].data, "message||a\0b", 12) == 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void parser_trailing_partial_event_is_not_dispatched(void)
{
    struct recorder r = {0};
    int partial = -1;

    CHECK_EQ(parse_all(&r, "data: a\n\ndata: b", 1024, &partial), 0);
    CHECK_EQ(r.count, 1);
    CHECK_EQ(partial, 1); /* unterminated line */
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "data: a\n\ndata: b\n", 1024, &partial), 0);
    CHECK_EQ(r.count, 1);
    CHECK_EQ(partial, 1); /* data without its blank line */
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "data: a\n\nevent: e\n", 1024, &partial), 0);
    CHECK_EQ(partial, 1); /* event field without its blank line */
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "data: a\n\n: keepalive\n", 1024, &partial), 0);
    CHECK_EQ(r.count, 1);
    CHECK_EQ(partial, 0); /* a comment is no event */
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "data: a\r\n\r", 1024, &partial), 0);
    CHECK_EQ(r.count, 1);
    CHECK_EQ(partial, 0); /* a CR waiting for its LF is no event */
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "", 1024, &partial), 0);
    CHECK_EQ(partial, 0);
    recorder_free(&r);
}

static void parser_returns_callback_stop_value(void)
{
    struct recorder r = {0};
    r.stop_after = 2;
    r.stop_value = 7;
    CHECK_EQ(parse_all(&r, "data: 1\n\ndata: 2\n\ndata: 3\n\n", 1024, NULL), 7);
    CHECK_EQ(r.count, 2); /* nothing dispatched after the stop */
    CHECK_MEMEQ(r.events[1].data, r.events[1].len, "message||2");
    recorder_free(&r);

    r.stop_after = 1;
    r.stop_value = -ECANCELED;
    CHECK_EQ(parse_all(&r, "data: 1\n\ndata: 2\n\n", 1024, NULL), -ECANCELED);
    CHECK_EQ(r.count, 1);
    recorder_free(&r);
}

static void parser_rejects_line_longer_than_max(void)
{
    struct recorder r = {0};
    /* A line of exactly max bytes is fine. */
    CHECK_EQ(parse_all(&r, "data: 0123456789\n\n", 16, NULL), 0);
    CHECK_EQ(r.count, 1);
    recorder_free(&r);
    /* One more, in one feed, terminated or not. */
    CHECK_EQ(parse_all(&r, "data: 0123456789a\n\n", 16, NULL), -E2BIG);
    CHECK_EQ(parse_all(&r, "data: 0123456789a", 16, NULL), -E2BIG);
    CHECK_EQ(r.count, 0);
    /* A comment counts as well: it is a line. */
    CHECK_EQ(parse_all(&r, ": 0123456789abcdef\n", 16, NULL), -E2BIG);

    /* Growing across feeds. */
    struct sse_parser p;
    sse_parser_init(&p, 16);
    CHECK_EQ(sse_parser_feed(&p, "data: 01234", 11, record_cb, &r), 0);
    CHECK_EQ(sse_parser_feed(&p, "56789", 5, record_cb, &r), 0);
    CHECK_EQ(sse_parser_feed(&p, "a", 1, record_cb, &r), -E2BIG);
    sse_parser_free(&p);

    sse_parser_init(&p, 16);
    CHECK_EQ(sse_parser_feed(&p, "data: 01234", 11, record_cb, &r), 0);
    CHECK_EQ(sse_parser_feed(&p, "56789a\n\n", 8, record_cb, &r), -E2BIG);
    sse_parser_free(&p);
    CHECK_EQ(r.count, 0);
    recorder_free(&r);
}

static void parser_rejects_data_longer_than_max(void)
{
    struct recorder r = {0};
    /* Two lines of 7 bytes are 16 bytes of data buffer (with their "\n"). */
    CHECK_EQ(parse_all(&r, "data: 0123456\ndata: 0123456\n\n", 16, NULL), 0);
    CHECK_EQ(r.count, 1);
    CHECK_MEMEQ(r.events[0].data, r.events[0].len, "message||0123456\n0123456");
    recorder_free(&r);

    CHECK_EQ(parse_all(&r, "data: 0123456\ndata: 0123456\ndata:\n\n", 16, NULL), -E2BIG);
    CHECK_EQ(r.count, 0);
    recorder_free(&r);

    /* The bound is per event: the buffer is emptied by each dispatch. */
    CHECK_EQ(parse_all(&r, "data: 0123456\ndata: 0123456\n\ndata: 0123456\ndata: 0123456\n\n",
                       16, NULL), 0);
    CHECK_EQ(r.count, 2);
    recorder_free(&r);
}

/* ---- round trip -------------------------------------------------------- */

static uint64_t prng_state;

static uint32_t prng_next(void) /* xorshift64*, fixed seed: reproducible */
{
    prng_state ^= prng_state >> 12;
    prng_state ^= prng_state << 25;
    prng_state ^= prng_state >> 27;
    return (uint32_t)((prng_state * 2685821657736338717ull) >> 32);
}

struct roundtrip {
    struct buf data;
    struct buf id;
    struct buf event;
    int count;
};

static int roundtrip_cb(void *arg, const struct sse_event *ev)
{
    struct roundtrip *rt = arg;
    rt->count++;
    buf_reset(&rt->data);
    buf_reset(&rt->id);
    buf_reset(&rt->event);
    buf_append(&rt->data, ev->data, ev->data_len);
    buf_append(&rt->id, ev->id, ev->id_len);
    buf_append(&rt->event, ev->event, ev->event_len);
    return 0;
}

/* What a parser gives back for data: each CRLF and lone CR becomes LF. */
static void normalise_line_ends(struct buf *out, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\r') {
            buf_append(out, "\n", 1);
            if (i + 1 < len && data[i + 1] == '\n')
                i++;
        } else {
            buf_append(out, &data[i], 1);
        }
    }
}

static void encode_then_parse_round_trips_random_data(void)
{
    static const char alphabet[] = "\n\r \t:a";
    struct buf wire = {0}, want = {0};
    char data[256];
    char id[32];
    struct roundtrip rt = {0};
    struct sse_parser p;

    prng_state = 0x9E3779B97F4A7C15ull;
    sse_parser_init(&p, 4096);
    for (int iter = 0; iter < 1000; iter++) {
        size_t len = prng_next() % sizeof(data);
        for (size_t i = 0; i < len; i++) {
            uint32_t roll = prng_next();
            if (roll % 3 == 0) /* line ends and separators, often */
                data[i] = alphabet[(roll >> 8) % (sizeof(alphabet) - 1)];
            else /* any byte but NUL */
                data[i] = (char)(1 + (roll >> 8) % 255);
        }
        snprintf(id, sizeof(id), "%d", iter);
        const char *event = iter % 2 ? "ev" : NULL;

        buf_reset(&wire);
        sse_encode(&wire, id, event, data, len);
        /* Feed in random pieces so that the incremental paths are used too. */
        int before = rt.count;
        for (size_t from = 0; from < wire.len;) {
            size_t piece = 1 + prng_next() % 64;
            if (piece > wire.len - from)
                piece = wire.len - from;
            CHECK_EQ(sse_parser_feed(&p, wire.data + from, piece, roundtrip_cb, &rt), 0);
            from += piece;
        }
        CHECK_EQ(rt.count, before + 1);
        CHECK_EQ(sse_parser_has_partial(&p), 0);

        buf_reset(&want);
        normalise_line_ends(&want, data, len);
        CHECK_EQ(rt.data.len, want.len);
        CHECK(rt.data.len == want.len && memcmp(rt.data.data, want.data, want.len) == 0);
        CHECK_MEMEQ(rt.id.data, rt.id.len, id);
        CHECK_MEMEQ(rt.event.data, rt.event.len, event ? event : "message");
        if (test_current_failed) {
            fprintf(stderr, "  round trip failed at iteration %d\n", iter);
            break;
        }
    }
    CHECK_EQ(rt.count, 1000);
    sse_parser_free(&p);
    buf_free(&wire);
    buf_free(&want);
    buf_free(&rt.data);
    buf_free(&rt.id);
    buf_free(&rt.event);
}

static void parser_handles_many_events_in_one_large_chunk(void)
{
    /* CR-only line ends with no LF anywhere: the scan must stay linear. */
    struct buf wire = {0};
    for (int i = 0; i < 20000; i++)
        buf_printf(&wire, "id: %d\rdata: %d\r\r", i, i);
    struct roundtrip rt = {0};
    struct sse_parser p;
    sse_parser_init(&p, 1024);
    CHECK_EQ(sse_parser_feed(&p, wire.data, wire.len, roundtrip_cb, &rt), 0);
    CHECK_EQ(rt.count, 20000);
    CHECK_MEMEQ(rt.data.data, rt.data.len, "19999");
    CHECK_MEMEQ(rt.id.data, rt.id.len, "19999");
    sse_parser_free(&p);
    buf_free(&wire);
    buf_free(&rt.data);
    buf_free(&rt.id);
    buf_free(&rt.event);
}

int main(void)
{
    RUN_TEST(encode_with_id_and_event_writes_exact_frame);
    RUN_TEST(encode_without_id_or_event_leaves_those_lines_out);
    RUN_TEST(encode_splits_multiline_data_into_data_lines);
    RUN_TEST(encode_treats_crlf_and_lone_cr_as_line_ends);
    RUN_TEST(encode_empty_data_is_one_empty_data_line);
    RUN_TEST(encode_strips_cr_and_lf_from_id_and_event);
    RUN_TEST(parser_dispatches_one_event);
    RUN_TEST(parser_dispatches_several_events_from_one_feed);
    RUN_TEST(parser_interprets_whole_lines_in_place);
    RUN_TEST(parser_one_shot_gives_expected_events);
    RUN_TEST(parser_split_at_every_position_matches_one_shot);
    RUN_TEST(parser_fed_one_byte_at_a_time_matches_one_shot);
    RUN_TEST(parser_cr_ending_a_feed_and_lf_starting_the_next_are_one_line_end);
    RUN_TEST(parser_cr_ending_a_feed_then_other_byte_starts_a_line);
    RUN_TEST(parser_skips_bom_only_at_stream_start);
    RUN_TEST(parser_keeps_a_partial_bom_that_turns_out_not_to_be_one);
    RUN_TEST(parser_data_with_empty_value_dispatches_empty_data);
    RUN_TEST(parser_line_without_colon_is_field_with_empty_value);
    RUN_TEST(parser_removes_exactly_one_space_after_colon);
    RUN_TEST(parser_ignores_retry_unknown_fields_and_comments);
    RUN_TEST(parser_does_not_dispatch_without_data_but_keeps_id);
    RUN_TEST(parser_ignores_id_containing_nul);
    RUN_TEST(parser_passes_nul_in_data_through);
    RUN_TEST(parser_trailing_partial_event_is_not_dispatched);
    RUN_TEST(parser_returns_callback_stop_value);
    RUN_TEST(parser_rejects_line_longer_than_max);
    RUN_TEST(parser_rejects_data_longer_than_max);
    RUN_TEST(encode_then_parse_round_trips_random_data);
    RUN_TEST(parser_handles_many_events_in_one_large_chunk);
    return test_report("test_sse");
}
