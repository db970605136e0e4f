/* curl_uv.h: libcurl's multi interface driven by a libuv loop.
 *
 * A curl_uv owns one CURLM and what drives it: an epoll set of the sockets
 * libcurl watches (one uv_poll_t on the set), one timer for libcurl's
 * timeouts, and the easy handles kept for reuse. The user
 * adds and removes easy handles and hears, through on_done, when a transfer
 * has finished.
 *
 * The one rule: nothing is torn down inside a libcurl callback. libcurl
 * forbids removing an easy handle (and most of its API) while it is on the
 * stack, yet the user's code, called from libcurl's write and header
 * callbacks, must be free to decide anything. So curl_uv_in_callback() says
 * whether libcurl is on the stack, curl_uv_remove() refuses (asserts) to run
 * there, and curl_uv_defer() queues work for a safe point: a uv_idle_t that
 * runs it on the next loop iteration, outside any libcurl callback.
 */
#ifndef RUNCAST_CURL_UV_H
#define RUNCAST_CURL_UV_H

#include <curl/curl.h>
#include <uv.h>

#include "common.h"

struct curl_uv;

/* A finished transfer (CURLMSG_DONE): easy is still added; result is its
 * CURLcode. Runs outside any libcurl callback: it may remove easy, add others
 * and defer work. */
typedef void (*curl_uv_done_cb)(CURL *easy, CURLcode result, void *arg);

/* Work to run at a safe point. The user embeds it in its own object and
 * recovers the object with container_of. */
struct curl_uv_task {
    struct list node; /* in the curl_uv's queue while queued */
    void (*run)(struct curl_uv_task *task);
};

/* Creates the multi handle on loop (curl_global_init is done once, on the
 * first call). Returns the curl_uv (owned by the caller until curl_uv_close),
 * or NULL with *err set to a negative errno. */
struct curl_uv *curl_uv_new(uv_loop_t *loop, curl_uv_done_cb on_done, void *arg, int *err);

/* Stops watching every socket, frees the multi handle and closes the libuv
 * handles; closed(arg) runs from the last close callback, after which cu is
 * freed. Every easy handle must have been removed, and no task be queued. */
void curl_uv_close(struct curl_uv *cu, void (*closed)(void *arg), void *arg);

/* An easy handle with every option at its default: one that a finished
 * transfer left behind (see curl_uv_remove) or a new one. The caller's until
 * curl_uv_add; free an unused one with curl_easy_cleanup. NULL if libcurl
 * cannot allocate one. */
CURL *curl_uv_easy(struct curl_uv *cu);

/* Hands easy to libcurl. Not inside a libcurl callback (check
 * curl_uv_in_callback and defer). Returns 0, or -EIO if libcurl refuses (easy
 * stays the caller's). */
int curl_uv_add(struct curl_uv *cu, CURL *easy);

/* Takes easy from libcurl; it is the curl_uv's again (reset and kept for
 * curl_uv_easy, or freed when enough are kept), so the caller forgets it.
 * Never inside a libcurl callback (asserted): call it from on_done or from a
 * deferred task. */
void curl_uv_remove(struct curl_uv *cu, CURL *easy);

/* 1 while libcurl is on the stack (curl_multi_socket_action is running), so
 * that whatever libcurl's callbacks call knows it must defer. */
int curl_uv_in_callback(const struct curl_uv *cu);

/* Queues task->run for the next safe point, once however often it is called
 * before it runs. task->node must have been list_init()ed. Safe anywhere. */
void curl_uv_defer(struct curl_uv *cu, struct curl_uv_task *task);

/* Easy handles added and not yet removed. */
size_t curl_uv_transfers(const struct curl_uv *cu);

#endif
