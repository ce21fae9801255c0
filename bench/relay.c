/* relay.c - the least any user-space relay can do: a plain TCP forwarder, for the benchmark.
 *
 * No WebSocket, no framing, no Python, no event loop: every connection gets two threads that
 * read() and write() 256 KiB at a time, one per direction. What it reaches on the down
 * workload is the ceiling of a relay process on this machine, beside which the broker's
 * figure can be read (docs/benchmarks.md). It is not a product and not a peer.
 *
 * usage: relay LISTEN_PORT tcp:BACKEND_PORT|unix:BACKEND_PATH   (prints "ready" when listening)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)

static const char *backend;

struct pump { int from, to; };

static void copy_until_eof(int from, int to) {
    static __thread char buf[BUF_SIZE];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n <= 0) return;
        for (ssize_t off = 0; off < n;) {
            ssize_t k = write(to, buf + off, n - off);
            if (k <= 0) return;
            off += k;
        }
    }
}

/* A finished connection's threads park instead of exiting: the benchmark reads CPU time
 * from /proc/PID/task/ and a thread that exited is no longer there. A relay process serves
 * a warm-up and one measurement, so only a few threads ever park. */
static void park(void) {
    for (;;) pause();
}

static void *upstream(void *arg) {
    struct pump *p = arg;
    copy_until_eof(p->from, p->to);
    shutdown(p->to, SHUT_RDWR);   /* the client left: end the backend side too */
    shutdown(p->from, SHUT_RDWR);
    park();
    return NULL;
}

static int connect_backend(void) {
    if (!strncmp(backend, "unix:", 5)) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", backend + 5);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        return connect(fd, (struct sockaddr *)&a, sizeof a) ? (close(fd), -1) : fd;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(backend + 4)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return connect(fd, (struct sockaddr *)&a, sizeof a) ? (close(fd), -1) : fd;
}

static void *session(void *arg) {
    int client = (int)(long)arg, one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int server = connect_backend();
    if (server < 0) {
        close(client);
        return NULL;
    }
    struct pump up = {client, server};  /* on this thread's stack, which parks and stays */
    pthread_t t;
    if (pthread_create(&t, NULL, upstream, &up) == 0) {
        copy_until_eof(server, client);
        shutdown(client, SHUT_RDWR);
        shutdown(server, SHUT_RDWR);
        park();  /* the descriptors stay open with the threads: a few per process, see park() */
    }
    close(server);
    close(client);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strncmp(argv[2], "tcp:", 4) && strncmp(argv[2], "unix:", 5))) {
        fprintf(stderr, "usage: relay LISTEN_PORT tcp:BACKEND_PORT|unix:BACKEND_PATH\n");
        return 2;
    }
    backend = argv[2];
    signal(SIGPIPE, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&a, sizeof a) || listen(listener, 128)) {
        perror("relay: listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) continue;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        if (pthread_create(&t, &attr, session, (void *)(long)client)) close(client);
        pthread_attr_destroy(&attr);
    }
}
