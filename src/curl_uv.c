/* curl_uv.c: libcurl's multi interface on a libuv loop (see curl_uv.h).
 *
 * How libcurl and libuv meet. libcurl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION) and when to wake it up (CURLMOPT_TIMERFUNCTION:
 * one uv_timer_t). Its sockets go into an epoll set of our own, whose
 * descriptor the loop watches with one uv_poll_t: a uv_poll_t per socket
 * cost an ioctl and four epoll_ctl calls per upstream connection (libuv
 * checks a new descriptor by adding and deleting it, then adds it again),
 * 6-7% of runcast's CPU in a run storm, where every run opens one;
 * the set costs one epoll_ctl per change libcurl asks for. When a socket is
 * ready or the timer fires we call curl_multi_socket_action() and then
 * drain curl_multi_info_read() for finished transfers, handing each to
 * on_done once libcurl is off the stack.
 *
 * Safe points. in_curl counts curl_multi_socket_action() frames on the stack:
 * everything libcurl's callbacks (the user's write and header functions) run
 * sees it nonzero, so it defers instead of removing or adding handles there.
 * Deferred work waits on the task queue, which a uv_idle_t drains on the next
 * loop iteration; the idle handle is stopped whenever the queue is empty, so
 * an idle curl_uv costs the loop nothing.
 *
 * Ownership: the curl_uv is owned by its creator until curl_uv_close(), then
 * by itself until its last handle has closed. Socket contexts are owned by
 * the curl_uv. Easy handles are the user's until curl_uv_add(), ours from
 * then on (curl_uv_remove resets them and keeps up to SPARE_EASY_MAX for
 * curl_uv_easy to hand out again: a fresh easy handle is a dozen
 * allocations, one per run start in a run storm). Tasks belong to the user;
 * the queue only links them.
 */
#include "curl_uv.h"

#include <assert.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define SPARE_EASY_MAX 32
#define READY_BATCH 64 /* epoll events read per wake-up of the set */

struct curl_uv {
    uv_loop_t *loop;
    CURLM *multi;             /* NULL once closing */
    uv_timer_t multi_timer;   /* libcurl's timeout */
    uv_idle_t safe_point;     /* runs the task queue; active only while it is not empty */
    int epoll_fd;             /* the set of libcurl's sockets */
    uv_poll_t set_poll;       /* the loop's watch on epoll_fd */
    int in_batch;             /* set_ready_cb is handing out a batch of events */
    struct list retired;      /* sock_ctx removed during a batch, freed after it */
    struct list tasks;        /* struct curl_uv_task, in the order queued */
    struct list sockets;      /* struct sock_ctx being watched */
    curl_uv_done_cb on_done;
    void *arg;
    size_t transfers;         /* easy handles added, not yet removed */
    CURL *spare_easy[SPARE_EASY_MAX]; /* removed, reset, ready for curl_uv_easy */
    size_t spare_count;
    int in_curl;              /* depth of curl_multi_socket_action on the stack */
    int closing;              /* curl_uv_close ran: libcurl's callbacks start nothing */
    int handles_to_close;
    void (*closed)(void *arg);
    void *closed_arg;
};

/* One watched socket, the data of its epoll entry. Owned by the curl_uv; a
 * fresh one is made whenever libcurl starts watching a socket that has none.
 * One removed while a batch of events is handed out may still be named by a
 * later event of that batch: it is retired (fd -1) and freed after the
 * batch. */
struct sock_ctx {
    curl_socket_t fd;   /* -1 once retired */
    uint32_t events;    /* EPOLLIN/EPOLLOUT that libcurl asked for */
    struct list node;   /* in curl_uv.sockets while watched, then in retired */
};

static int curl_globally_initialized;

/* ---- driving libcurl ---- */

/* Hands every finished transfer to on_done, outside libcurl. on_done may
 * remove handles, which is why the loop asks libcurl again each time. */
static void drain_finished(struct curl_uv *cu)
{
    CURLMsg *msg;
    int left;
    while (cu->multi != NULL && (msg = curl_multi_info_read(cu->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE)
            cu->on_done(msg->easy_handle, msg->data.result, cu->arg);
    }
}

static void socket_action(struct curl_uv *cu, curl_socket_t fd, int flags)
{
    int running;
    cu->in_curl++;
    curl_multi_socket_action(cu->multi, fd, flags, &running);
    cu->in_curl--;
    drain_finished(cu);
}

/* Takes ctx out of the set (libcurl still owns the socket, which may stay
 * open in its connection cache) and frees it, or retires it until the
 * batch being handed out is over. */
static void sock_forget(struct curl_uv *cu, struct sock_ctx *ctx)
{
    epoll_ctl(cu->epoll_fd, EPOLL_CTL_DEL, ctx->fd, NULL);
    list_remove(&ctx->node);
    if (cu->in_batch) {
        ctx->fd = -1;
        list_insert_tail(&cu->retired, &ctx->node);
    } else {
        free(ctx);
    }
}

/* The set is readable: hands each ready socket to libcurl. A socket error
 * (EPOLLERR, EPOLLHUP) is passed as readiness in the directions libcurl
 * waits for, not as CURL_CSELECT_ERR: libcurl then meets the real error in
 * its own read or write, and can retry a request that hit a kept-alive
 * connection the upstream had just closed (CURL_CSELECT_ERR fails the
 * transfer outright). The set is level-triggered: what is left unread is
 * reported again on the next loop iteration. */
static void set_ready_cb(uv_poll_t *poll, int status, int events)
{
    struct curl_uv *cu = container_of(poll, struct curl_uv, set_poll);
    struct epoll_event ready[READY_BATCH];
    int n = epoll_wait(cu->epoll_fd, ready, READY_BATCH, 0);
    cu->in_batch = 1;
    for (int i = 0; i < n && cu->multi != NULL; i++) {
        struct sock_ctx *ctx = ready[i].data.ptr;
        if (ctx->fd < 0)
            continue; /* removed by an earlier socket's action */
        uint32_t got = ready[i].events;
        if (got & (EPOLLERR | EPOLLHUP))
            got |= ctx->events;
        int flags = 0;
        if (got & EPOLLIN)
            flags |= CURL_CSELECT_IN;
        if (got & EPOLLOUT)
            flags |= CURL_CSELECT_OUT;
        socket_action(cu, ctx->fd, flags);
    }
    cu->in_batch = 0;
    while (!list_empty(&cu->retired)) {
        struct list *node = cu->retired.next;
        list_remove(node);
        free(container_of(node, struct sock_ctx, node));
    }
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching fd. */
static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct curl_uv *cu = userp;
    struct sock_ctx *ctx = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ctx != NULL) {
            sock_forget(cu, ctx);
            curl_multi_assign(cu->multi, fd, NULL);
        }
        return 0;
    }
    if (cu->closing)
        return 0;
    uint32_t events = 0;
    if (what & CURL_POLL_IN)
        events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        events |= EPOLLOUT;
    int op = EPOLL_CTL_MOD;
    if (ctx == NULL) {
        ctx = xcalloc(1, sizeof(*ctx));
        ctx->fd = fd;
        op = EPOLL_CTL_ADD;
    } else if (ctx->events == events) {
        return 0; /* libcurl repeats itself: a new transfer on a kept connection */
    }
    struct epoll_event ev = {.events = events, .data.ptr = ctx};
    if (epoll_ctl(cu->epoll_fd, op, fd, &ev) != 0) {
        if (op == EPOLL_CTL_ADD)
            free(ctx);
        return -1;
    }
    ctx->events = events;
    if (op == EPOLL_CTL_ADD) {
        list_insert_tail(&cu->sockets, &ctx->node);
        curl_multi_assign(cu->multi, fd, ctx);
    }
    return 0;
}

static void multi_timer_cb(uv_timer_t *timer)
{
    struct curl_uv *cu = container_of(timer, struct curl_uv, multi_timer);
    socket_action(cu, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION: one timer for the whole multi handle. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct curl_uv *cu = userp;
    if (cu->closing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&cu->multi_timer);
    else
        uv_timer_start(&cu->multi_timer, multi_timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- the task queue: work at a safe point ---- */

static void safe_point_cb(uv_idle_t *idle)
{
    struct curl_uv *cu = container_of(idle, struct curl_uv, safe_point);
    while (!list_empty(&cu->tasks)) {
        struct list *node = cu->tasks.next;
        list_remove(node);
        struct curl_uv_task *task = container_of(node, struct curl_uv_task, node);
        task->run(task);
    }
    uv_idle_stop(idle);
}

void curl_uv_defer(struct curl_uv *cu, struct curl_uv_task *task)
{
    if (!list_linked(&task->node))
        list_insert_tail(&cu->tasks, &task->node);
    uv_idle_start(&cu->safe_point, safe_point_cb);
}

/* ---- transfers ---- */

int curl_uv_add(struct curl_uv *cu, CURL *easy)
{
    assert(cu->in_curl == 0);
    if (cu->closing || curl_multi_add_handle(cu->multi, easy) != CURLM_OK)
        return -EIO;
    cu->transfers++;
    return 0;
}

CURL *curl_uv_easy(struct curl_uv *cu)
{
    if (cu->spare_count > 0)
        return cu->spare_easy[--cu->spare_count];
    return curl_easy_init();
}

void curl_uv_remove(struct curl_uv *cu, CURL *easy)
{
    assert(cu->in_curl == 0); /* the one rule: see curl_uv.h */
    curl_multi_remove_handle(cu->multi, easy);
    cu->transfers--;
    if (cu->closing || cu->spare_count == SPARE_EASY_MAX) {
        curl_easy_cleanup(easy);
        return;
    }
    /* Every option back to its default (the user's callbacks and pointers
     * with them); connections stay in the multi handle's cache. */
    curl_easy_reset(easy);
    cu->spare_easy[cu->spare_count++] = easy;
}

int curl_uv_in_callback(const struct curl_uv *cu)
{
    return cu->in_curl > 0;
}

size_t curl_uv_transfers(const struct curl_uv *cu)
{
    return cu->transfers;
}

/* ---- life ---- */

struct curl_uv *curl_uv_new(uv_loop_t *loop, curl_uv_done_cb on_done, void *arg, int *err)
{
    if (!curl_globally_initialized) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            *err = -EIO;
            return NULL;
        }
        curl_globally_initialized = 1;
    }
    CURLM *multi = curl_multi_init();
    if (multi == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) {
        *err = -errno;
        curl_multi_cleanup(multi);
        return NULL;
    }
    struct curl_uv *cu = xcalloc(1, sizeof(*cu));
    cu->epoll_fd = epoll_fd;
    list_init(&cu->retired);
    if (uv_poll_init(loop, &cu->set_poll, epoll_fd) != 0 ||
        uv_poll_start(&cu->set_poll, UV_READABLE, set_ready_cb) != 0) {
        *err = -EIO;
        close(epoll_fd);
        curl_multi_cleanup(multi);
        free(cu);
        return NULL;
    }
    cu->loop = loop;
    cu->multi = multi;
    cu->on_done = on_done;
    cu->arg = arg;
    list_init(&cu->tasks);
    list_init(&cu->sockets);
    uv_timer_init(loop, &cu->multi_timer);
    uv_idle_init(loop, &cu->safe_point);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, cu);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, cu);
    *err = 0;
    return cu;
}

static void handle_closed_cb(uv_handle_t *handle)
{
    struct curl_uv *cu = handle->data;
    if (--cu->handles_to_close > 0)
        return;
    close(cu->epoll_fd); /* only now: the loop watched it until set_poll closed */
    void (*closed)(void *) = cu->closed;
    void *arg = cu->closed_arg;
    free(cu);
    if (closed)
        closed(arg);
}

/* Stops watching sockets while libcurl still owns them (so no epoll entry
 * outlives its descriptor), then frees the multi handle. */
void curl_uv_close(struct curl_uv *cu, void (*closed)(void *arg), void *arg)
{
    if (cu->closing)
        return;
    cu->closing = 1;
    cu->closed = closed;
    cu->closed_arg = arg;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &cu->sockets) {
        struct sock_ctx *ctx = container_of(pos, struct sock_ctx, node);
        curl_multi_assign(cu->multi, ctx->fd, NULL);
        sock_forget(cu, ctx);
    }
    while (cu->spare_count > 0)
        curl_easy_cleanup(cu->spare_easy[--cu->spare_count]);
    curl_multi_cleanup(cu->multi);
    cu->multi = NULL;
    cu->handles_to_close = 3;
    cu->multi_timer.data = cu;
    cu->safe_point.data = cu;
    cu->set_poll.data = cu;
    uv_close((uv_handle_t *)&cu->multi_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&cu->safe_point, handle_closed_cb);
    uv_close((uv_handle_t *)&cu->set_poll, handle_closed_cb);
}
