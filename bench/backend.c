/* Synthetic VNC-like backend for the benchmark: one thread, epoll, TCP and UNIX socket.
 *
 * Like a VNC server it speaks first: every connection gets "RFB 003.008\n" (12 bytes).
 * The client then picks a mode with a 9-byte command: one letter + a little-endian u64.
 *   'D' N  stream N bytes to the client (then swallow whatever comes)
 *   'S' N  swallow; after N bytes have arrived send one byte 'A' (the ack), keep swallowing
 *   'E' 0  echo everything back
 *
 * usage: backend TCP_PORT UNIX_PATH     (prints "ready" on stdout when listening)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define GREETING "RFB 003.008\n"
#define BUF_SIZE (256 * 1024)

enum mode { CMD, DOWN, SWALLOW, ECHO };

struct conn {
    int fd;
    enum mode mode;
    uint8_t cmd[9];
    int cmd_len;
    uint64_t remaining;          /* DOWN: bytes left to send; SWALLOW: bytes before the ack */
    uint8_t *pending;            /* ECHO/ack: bytes not yet written back */
    size_t pending_len, pending_off;
    int want_out;
};

static int ep;
static uint8_t stream_buf[BUF_SIZE];
static uint8_t read_buf[BUF_SIZE];

static void watch(struct conn *c, int out) {
    if (c->want_out == out) return;
    c->want_out = out;
    /* While output is blocked we stop reading (backpressure), except in DOWN mode. */
    struct epoll_event ev = {.events = out ? (EPOLLOUT | (c->mode == DOWN ? EPOLLIN : 0)) : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void drop(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Queue bytes to send back; returns -1 if the connection died. */
static int send_back(struct conn *c, const uint8_t *data, size_t len) {
    if (c->pending_len == c->pending_off) {
        ssize_t n = write(c->fd, data, len);
        if (n < 0 && errno != EAGAIN) return -1;
        if (n < 0) n = 0;
        data += n;
        len -= n;
        if (len == 0) return 0;
    }
    size_t left = c->pending_len - c->pending_off;
    uint8_t *buf = malloc(left + len);
    memcpy(buf, c->pending + c->pending_off, left);
    memcpy(buf + left, data, len);
    free(c->pending);
    c->pending = buf;
    c->pending_len = left + len;
    c->pending_off = 0;
    watch(c, 1);
    return 0;
}

static int handle_data(struct conn *c, uint8_t *data, size_t len) {
    while (len > 0) {
        switch (c->mode) {
        case CMD: {
            size_t want = 9 - (size_t)c->cmd_len, take = want < len ? want : len;
            memcpy(c->cmd + c->cmd_len, data, take);
            c->cmd_len += take;
            data += take;
            len -= take;
            if (c->cmd_len < 9) break;
            uint64_t arg;
            memcpy(&arg, c->cmd + 1, 8);
            c->remaining = arg;
            if (c->cmd[0] == 'D') {
                c->mode = DOWN;
                c->want_out = -1;
                watch(c, 1);
            } else if (c->cmd[0] == 'S') {
                c->mode = SWALLOW;
                if (arg == 0 && send_back(c, (const uint8_t *)"A", 1) < 0) return -1;
            } else if (c->cmd[0] == 'E') {
                c->mode = ECHO;
            } else {
                return -1;
            }
            break;
        }
        case ECHO:
            return send_back(c, data, len);
        case SWALLOW:
            if (c->remaining > 0) {
                uint64_t take = len < c->remaining ? len : c->remaining;
                c->remaining -= take;
                if (c->remaining == 0 && send_back(c, (const uint8_t *)"A", 1) < 0) return -1;
            }
            return 0;
        case DOWN:
            return 0;
        }
    }
    return 0;
}

static int handle_out(struct conn *c) {
    if (c->mode == DOWN) {
        while (c->remaining > 0) {
            size_t n = c->remaining < BUF_SIZE ? c->remaining : BUF_SIZE;
            ssize_t w = write(c->fd, stream_buf, n);
            if (w < 0) return errno == EAGAIN ? 0 : -1;
            c->remaining -= w;
        }
        c->mode = SWALLOW;  /* done: swallow what follows */
        watch(c, 0);
        return 0;
    }
    while (c->pending_off < c->pending_len) {
        ssize_t w = write(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        c->pending_off += w;
    }
    watch(c, 0);
    return 0;
}

static int listen_on(struct sockaddr *addr, socklen_t len) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, addr, len) < 0 || listen(fd, 4096) < 0) {
        perror("backend: bind/listen");
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    ev.data.u64 = (uint64_t)fd << 1 | 1; /* odd: a listening socket */
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: backend TCP_PORT UNIX_PATH\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < BUF_SIZE; i++) stream_buf[i] = (uint8_t)(i * 131 + 7);
    ep = epoll_create1(0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(0x7f000001)};
    listen_on((struct sockaddr *)&in, sizeof in);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strncpy(un.sun_path, argv[2], sizeof un.sun_path - 1);
    unlink(argv[2]);
    listen_on((struct sockaddr *)&un, sizeof un);
    printf("ready\n");
    fflush(stdout);

    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 & 1) {
                int lfd = events[i].data.u64 >> 1;
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on UNIX */
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->mode = CMD;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                    if (write(fd, GREETING, 12) != 12) drop(c);
                }
                continue;
            }
            struct conn *c = events[i].data.ptr;
            int dead = 0;
            if (events[i].events & EPOLLOUT) dead = handle_out(c) < 0;
            if (!dead && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                ssize_t r = read(c->fd, read_buf, sizeof read_buf);
                if (r == 0 || (r < 0 && errno != EAGAIN)) dead = 1;
                else if (r > 0) dead = handle_data(c, read_buf, r) < 0;
            }
            if (dead) drop(c);
        }
    }
}
