/*
 * The send side of bench/clusterload.py's talkers: sends the RTP of every group's current talker so that the
 * Python generator does not have to (it keeps the signalling: login, join, floor control).
 *
 *   talker FD0 FD1 ...      the members' UDP sockets (already bound at their relay), inherited from the parent
 *
 * Commands on stdin, one a line:
 *   start I SSRC RATE IP PORT   member I (socket FDi) now holds its group's floor: send RTP with SSRC at RATE
 *                               packets/s to IP:PORT (its relay) until stopped
 *   stop I                      member I released the floor
 *   count                       -> "count SENT CALLS GSO" on stdout: RTP datagrams the kernel accepted so far,
 *                               the system calls that sent them, 1 if GSO is (still) in use
 *   quit (or end of input)      -> exit 0
 *
 * The packets look like the clients' SRTP to the relay, which forwards without decrypting: version 2, payload
 * type 111, sequence number, timestamp, the talker's SSRC, a 160-octet payload (a 20 ms frame) plus a 10-octet
 * stand-in for the SRTP authentication tag. Every TICK_US the talker sends what each active member owes since
 * the last tick (its credit grows by elapsed x RATE, capped at 0.1 s of arrears as in the Python pacer): all of a
 * member's packets of one tick go in ONE sendmsg with UDP_SEGMENT (GSO: the kernel cuts the buffer into
 * datagrams of SEGMENT octets), or with sendmmsg where the kernel refuses GSO. At 190 packets/s and a 20 ms tick
 * that is one system call per ~4 packets instead of one per packet. Built by bench/clustertalker.py with gcc -O2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef TICK_US
#define TICK_US 20000
#endif
#define HEADER 12
#define PAYLOAD 170 /* 160 octets of voice and a 10-octet authentication tag (SRTP, 80-bit) */
#define SEGMENT (HEADER + PAYLOAD)
#define MAX_BATCH 64 /* packets per member per tick: 0.1 s at 640 packets/s */

struct member {
    int fd;
    int active;
    uint32_t ssrc;
    uint16_t seq;
    uint32_t timestamp;
    double rate;
    double credit;
    struct sockaddr_in relay;
};

static struct member *members;
static int member_count;
static int *active_list; /* indexes of the active members, in no order */
static int active_count;
static uint64_t sent;
static uint64_t calls;
static int use_gso = 1;
static unsigned char buffer[MAX_BATCH * SEGMENT];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void deactivate(int index) {
    if (!members[index].active) return;
    members[index].active = 0;
    for (int i = 0; i < active_count; i++) {
        if (active_list[i] == index) {
            active_list[i] = active_list[--active_count];
            return;
        }
    }
}

static void command(char *line) {
    int index;
    unsigned long ssrc;
    double rate;
    char ip[64];
    int port;
    if (sscanf(line, "start %d %lu %lf %63s %d", &index, &ssrc, &rate, ip, &port) == 5) {
        if (index < 0 || index >= member_count) return;
        struct member *m = &members[index];
        m->ssrc = (uint32_t)ssrc;
        m->rate = rate;
        m->credit = 1.0; /* the first packet goes at once, as the Python pacer did */
        memset(&m->relay, 0, sizeof m->relay);
        m->relay.sin_family = AF_INET;
        m->relay.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, ip, &m->relay.sin_addr) != 1) return;
        if (!m->active) {
            m->active = 1;
            active_list[active_count++] = index;
        }
    } else if (sscanf(line, "stop %d", &index) == 1) {
        if (index >= 0 && index < member_count) deactivate(index);
    } else if (strncmp(line, "count", 5) == 0) {
        printf("count %llu %llu %d\n", (unsigned long long)sent, (unsigned long long)calls, use_gso);
        fflush(stdout);
    } else if (strncmp(line, "quit", 4) == 0) {
        exit(0);
    }
}

/* Reads what stdin has: complete lines are commands. Returns 0 at end of input. */
static int read_commands(void) {
    static char pending[1 << 16];
    static size_t used;
    ssize_t n = read(STDIN_FILENO, pending + used, sizeof pending - 1 - used);
    if (n == 0) return 0;
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    used += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < used; i++) {
        if (pending[i] == '\n') {
            pending[i] = '\0';
            command(pending + start);
            start = i + 1;
        }
    }
    memmove(pending, pending + start, used - start);
    used -= start;
    if (used == sizeof pending - 1) used = 0; /* a line longer than the buffer: not a command */
    return 1;
}

static void fill(struct member *m, int count) {
    for (int i = 0; i < count; i++) {
        unsigned char *p = buffer + i * SEGMENT;
        m->seq++;
        m->timestamp += 960;
        p[0] = 0x80;
        p[1] = 111;
        p[2] = m->seq >> 8;
        p[3] = m->seq & 0xFF;
        uint32_t ts = htonl(m->timestamp), ssrc = htonl(m->ssrc);
        memcpy(p + 4, &ts, 4);
        memcpy(p + 8, &ssrc, 4);
    }
}

static int send_gso(struct member *m, int count) {
    struct iovec iov = {buffer, (size_t)count * SEGMENT};
    char control[CMSG_SPACE(sizeof(uint16_t))];
    struct msghdr msg = {0};
    msg.msg_name = &m->relay;
    msg.msg_namelen = sizeof m->relay;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (count > 1) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t segment = SEGMENT;
        memcpy(CMSG_DATA(cm), &segment, sizeof segment);
    }
    ssize_t n = sendmsg(m->fd, &msg, MSG_DONTWAIT);
    if (n >= 0) return count;
    if (errno == EINVAL || errno == EIO || errno == ENOPROTOOPT || errno == EOPNOTSUPP) use_gso = 0;
    return -1;
}

static int send_mmsg(struct member *m, int count) {
    struct mmsghdr messages[MAX_BATCH];
    struct iovec iovecs[MAX_BATCH];
    memset(messages, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (int i = 0; i < count; i++) {
        iovecs[i].iov_base = buffer + i * SEGMENT;
        iovecs[i].iov_len = SEGMENT;
        messages[i].msg_hdr.msg_name = &m->relay;
        messages[i].msg_hdr.msg_namelen = sizeof m->relay;
        messages[i].msg_hdr.msg_iov = &iovecs[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    int n = sendmmsg(m->fd, messages, (unsigned)count, MSG_DONTWAIT);
    return n < 0 ? 0 : n;
}

static void tick(double elapsed) {
    for (int i = 0; i < active_count; i++) {
        struct member *m = &members[active_list[i]];
        m->credit += elapsed * m->rate;
        if (m->credit > m->rate * 0.1) m->credit = m->rate * 0.1;
        int count = (int)m->credit;
        if (count < 1) continue;
        if (count > MAX_BATCH) count = MAX_BATCH;
        m->credit -= count;
        fill(m, count);
        int done = use_gso ? send_gso(m, count) : -1;
        if (done < 0) {
            calls++; /* the refused GSO call */
            done = send_mmsg(m, count);
        }
        calls++;
        sent += (uint64_t)done;
    }
}

int main(int argc, char **argv) {
    member_count = argc - 1;
    members = calloc((size_t)(member_count ? member_count : 1), sizeof *members);
    active_list = calloc((size_t)(member_count ? member_count : 1), sizeof *active_list);
    if (!members || !active_list) return 1;
    for (int i = 0; i < member_count; i++) members[i].fd = atoi(argv[i + 1]);
    memset(buffer, 0x55, sizeof buffer);
    double last = now_s(), next = last + TICK_US / 1e6;
    struct pollfd input = {STDIN_FILENO, POLLIN, 0};
    for (;;) {
        double now = now_s();
        int wait_ms = now < next ? (int)((next - now) * 1000.0) + 1 : 0;
        if (poll(&input, 1, wait_ms) > 0 && !read_commands()) return 0;
        now = now_s();
        if (now >= next) {
            tick(now - last);
            last = now;
            next += TICK_US / 1e6;
            if (next < now) next = now + TICK_US / 1e6; /* starved: no catch-up storm beyond the credit cap */
        }
    }
}
