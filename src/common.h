/* common.h: small helpers every runcast module uses.
 *
 * Error convention (libuv's): functions that can fail return 0 or a positive
 * value on success and a negative errno (-ENOMEM, -EINVAL, ...) on failure.
 * Parsers that must map failures to HTTP statuses use their own small negative
 * enum with a *_strerror() (see http.h).
 */
#ifndef RUNCAST_COMMON_H
#define RUNCAST_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <string.h>
#include <sys/types.h>

#define RC_UNUSED(x) ((void)(x))
#define RC_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

/* Intrusive doubly linked list (circular, with a sentinel head). */
struct list {
    struct list *prev, *next;
};

static inline void list_init(struct list *head) { head->prev = head->next = head; }
static inline int list_empty(const struct list *head) { return head->next == head; }
/* A node that was list_init()ed or list_remove()d is "unlinked". */
static inline int list_linked(const struct list *node) { return node->next != node; }

static inline void list_insert_tail(struct list *head, struct list *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

/* Unlinks node; safe to call twice. */
static inline void list_remove(struct list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = node;
}

#define list_for_each_safe(pos, tmp, head) \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
         (pos) = (tmp), (tmp) = (pos)->next)

/* Growable byte buffer. Zero-initialised is an empty buffer. data is always
 * NUL-terminated when non-NULL, so text can be used as a C string. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};

/* All buf functions abort on out-of-memory: a daemon that cannot allocate a
 * few bytes cannot do anything useful, and pretending otherwise spreads
 * untested error paths everywhere. Bounds on what is buffered are enforced by
 * the callers (request limits, history limits, subscriber buffers). */
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_append_str(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_consume(struct buf *b, size_t n); /* drop n bytes from the front */
void buf_reset(struct buf *b);             /* len = 0, keeps memory */
void buf_free(struct buf *b);

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Copies s (NULL: "") or s[0..n) into out[size] as a string, cut to fit,
 * as snprintf(out, size, "%s", s) would (size 0: nothing is written). */
void str_copy(char *out, size_t size, const char *s);
void str_copyn(char *out, size_t size, const char *s, size_t n);

/* Monotonic milliseconds / nanoseconds (uv_hrtime based). */
uint64_t time_mono_ms(void);
uint64_t time_mono_ns(void);
/* Wall clock, seconds since the epoch with millisecond precision. */
double time_wall_seconds(void);

/* Case-insensitive compare of a counted string with a C string. */
int str_ieq(const char *s, size_t len, const char *cstr);
/* 1 when s[0..len) is 1..128 chars of [A-Za-z0-9_.-], and not "." or "..":
 * a path parameter. */
int str_is_path_param(const char *s, size_t len);
/* The value of a hexadecimal digit, or -1 for any other byte. */
int hex_digit_value(unsigned char ch);
/* Write v in decimal (1 to 20 digits) or as exactly 8 lowercase hex digits
 * at out, without a NUL; return the length. For hot paths, where snprintf
 * costs about a thousand instructions a call. */
size_t fmt_u64(char *out, uint64_t v);
size_t fmt_hex32(char *out, uint32_t v);
/* Iterates a comma-separated header list (RFC 9110 5.6.1, "#rule"): each
 * call finds the next element of list[0..len) from *pos (start at 0), sets
 * *item and *item_len to it without the spaces and tabs around it, moves
 * *pos past it and returns 1; returns 0 when no element is left. Empty
 * elements ("a,,b", leading or trailing commas) are skipped. A comma inside a
 * quoted string ("a,b", with backslash escapes) does not end an element, so
 * entity tags may hold commas. Never allocates; *item points into list. */
int str_list_next(const char *list, size_t len, size_t *pos, const char **item,
                  size_t *item_len);

#endif
