/* demo.h: the built-in demo agent, an ADK api_server look-alike.
 *
 * It serves real HTTP on a loopback port of its own, on its own loop and
 * thread, sharing no state with the gateway: the demo path is the real
 * upstream path. Message directives (words starting with '!') make it slow,
 * large, faulty or hanging; see docs/DEMO.md. Its code is in src/demo/
 * (src/demo/demo_internal.h is the table of contents). */
#ifndef RUNCAST_DEMO_H
#define RUNCAST_DEMO_H

#include "common.h"

struct demo_config {
    char host[256];
    int port;                /* 0: any free port */
    uint64_t word_delay_ms;  /* pause between streamed words */
};

/* Starts the agent on a new thread with its own loop. On success returns 0 and
 * stores the bound port in *port_out; else a negative errno. */
int demo_start_thread(const struct demo_config *cfg, int *port_out);
/* Stops the thread started by demo_start_thread() and waits for it (called at
 * process exit, outside the gateway's loop callbacks' hot path). */
void demo_stop_thread(void);
/* `runcast demo-agent [--listen HOST:PORT] [--word-delay D]`: runs the agent
 * in the foreground until SIGINT/SIGTERM. Returns the process exit status. */
int demo_main(int argc, char **argv);

#endif
