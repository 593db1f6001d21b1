/*
 * The receive side of bench/clusterload.py's members: reads every member's UDP socket so that the Python
 * generator does not have to.
 *
 *   sink FD0 FD1 ...        the members' sockets (already bound and joined), inherited from the parent
 *
 * Member i is the socket FDi. epoll waits on every socket and on stdin; a ready socket is drained with recvmmsg
 * (up to 64 datagrams per call). A datagram whose second octet is 192..223 is RTCP (RFC 5761 §4: floor control,
 * SRTCP) and goes to stdout as a frame: [member index u32][length u16][the datagram], big-endian. Everything else
 * (RTP copies from the relay) is only counted.
 *
 * Commands on stdin, one a line:
 *   count     -> a frame with index 0xFFFFFFFF and 16 octets: RTP datagrams received so far (u64), RTCP
 *                datagrams passed on so far (u64). It follows every RTCP frame received before the command.
 *   quit (or end of input) -> exit 0
 *
 * The frames of one pass over the ready sockets are written at once (blocking). After each pass the sink sleeps
 * NAP_US (1 ms): datagrams gather meanwhile, so one epoll_wait and one recvmmsg serve several of them (about half
 * the CPU per datagram of waking for each one; RTCP waits at most that long more). Built by bench/clustersink.py
 * with gcc -O2 at run time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DATAGRAM 2048
#define MAX_EVENTS 256
#define OUT_SIZE (1 << 20)
#define COUNT_INDEX 0xFFFFFFFFu
#define STDIN_TAG 0xFFFFFFFFu
#ifndef NAP_US
#define NAP_US 1000 /* after each pass: datagrams gather, so one epoll_wait and one recvmmsg serve several */
#endif

static unsigned char buffers[BATCH][MAX_DATAGRAM];
static struct iovec iovecs[BATCH];
static struct mmsghdr messages[BATCH];

static unsigned char out[OUT_SIZE];
static size_t out_used;

static uint64_t received_rtp;
static uint64_t passed_rtcp;

static void flush_out(void) {
    size_t done = 0;
    while (done < out_used) {
        ssize_t n = write(STDOUT_FILENO, out + done, out_used - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            exit(errno == EPIPE ? 0 : 1); /* the generator is gone */
        }
        done += (size_t)n;
    }
    out_used = 0;
}

static void put_u32(uint32_t v) {
    out[out_used++] = (unsigned char)(v >> 24);
    out[out_used++] = (unsigned char)(v >> 16);
    out[out_used++] = (unsigned char)(v >> 8);
    out[out_used++] = (unsigned char)v;
}

static void put_u64(uint64_t v) {
    put_u32((uint32_t)(v >> 32));
    put_u32((uint32_t)v);
}

static void put_frame_header(uint32_t index, unsigned length) {
    if (out_used + 6 + length + 16 > OUT_SIZE) flush_out();
    put_u32(index);
    out[out_used++] = (unsigned char)(length >> 8);
    out[out_used++] = (unsigned char)length;
}

static void drain(int fd, uint32_t index) {
    for (;;) {
        int n = recvmmsg(fd, messages, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return; /* EAGAIN, or an error the next datagram may not have */
        }
        for (int i = 0; i < n; i++) {
            unsigned length = messages[i].msg_len;
            const unsigned char *data = buffers[i];
            if (length > 1 && data[1] >= 192 && data[1] <= 223) {
                put_frame_header(index, length);
                memcpy(out + out_used, data, length);
                out_used += length;
                passed_rtcp++;
            } else {
                received_rtp++;
            }
        }
        if (n < BATCH) return; /* the socket is most likely empty: epoll says when it is not */
    }
}

/* Commands on stdin; returns 0 at end of input or "quit". */
static int commands(void) {
    static char line[256];
    static size_t used;
    ssize_t n = read(STDIN_FILENO, line + used, sizeof line - 1 - used);
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    if (n == 0) return 0;
    used += (size_t)n;
    char *start = line, *end;
    while ((end = memchr(start, '\n', used - (size_t)(start - line))) != NULL) {
        *end = '\0';
        if (strcmp(start, "count") == 0) {
            put_frame_header(COUNT_INDEX, 16);
            put_u64(received_rtp);
            put_u64(passed_rtcp);
        } else if (strcmp(start, "quit") == 0) {
            return 0;
        } else {
            fprintf(stderr, "sink: unknown command %s\n", start);
        }
        start = end + 1;
    }
    used -= (size_t)(start - line);
    memmove(line, start, used);
    if (used == sizeof line - 1) used = 0; /* a line too long for any command */
    return 1;
}

int main(int argc, char **argv) {
    int sockets = argc - 1;
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    if (epoll < 0) {
        perror("sink: epoll_create1");
        return 1;
    }
    for (int i = 0; i < BATCH; i++) {
        iovecs[i].iov_base = buffers[i];
        iovecs[i].iov_len = MAX_DATAGRAM;
        messages[i].msg_hdr.msg_iov = &iovecs[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    struct epoll_event event = {.events = EPOLLIN};
    event.data.u64 = STDIN_TAG;
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, STDIN_FILENO, &event) < 0) {
        perror("sink: stdin");
        return 1;
    }
    for (int i = 0; i < sockets; i++) {
        char *rest;
        long fd = strtol(argv[i + 1], &rest, 10);
        struct stat info;
        if (*rest != '\0' || fd < 3 || fd > 1 << 20 || fstat((int)fd, &info) < 0 || !S_ISSOCK(info.st_mode)) {
            fprintf(stderr, "sink: argument %d (%s) is not an inherited socket\n", i + 1, argv[i + 1]);
            return 2;
        }
        event.data.u64 = ((uint64_t)(uint32_t)i << 32) | (uint32_t)fd;
        if (epoll_ctl(epoll, EPOLL_CTL_ADD, (int)fd, &event) < 0) {
            perror("sink: epoll_ctl");
            return 1;
        }
    }
    struct epoll_event ready[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epoll, ready, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("sink: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = ready[i].data.u64;
            if (tag == STDIN_TAG) {
                if (!commands()) {
                    flush_out();
                    return 0;
                }
            } else {
                drain((int)(uint32_t)tag, (uint32_t)(tag >> 32));
            }
        }
        if (out_used) flush_out();
        if (NAP_US) usleep(NAP_US);
    }
}
