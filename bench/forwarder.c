/*
 * The reference for bench/relay.py: a minimal batched UDP fan-out forwarder in C.
 *
 *   forwarder PORT < table        table lines: "GROUP IPV4 PORT", one per member
 *
 * Binds 127.0.0.1:PORT (0: any free port), prints "port N" and then forwards every datagram from a member's
 * address to the other members of its group: recvmmsg drains up to 64 datagrams per call, sendmmsg sends all
 * their copies at once. Datagrams from unknown addresses are dropped. No checks beyond that: it is the floor
 * of what any relay must do (one receive and N-1 sends per packet), to compare the Python relay against.
 * Runs until killed. Built by bench/relay.py with gcc -O2 at run time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define MAX_DATAGRAM 2048
#define MAX_OUT 1024 /* sendmmsg's UIO_MAXIOV limit */
#define TABLE_SIZE 65536 /* open addressing; a power of two well above the member count */

struct member {
    uint32_t ip; /* network order; 0 = empty slot */
    uint16_t port; /* network order */
    int group;
};

static struct member table[TABLE_SIZE];
static struct sockaddr_in *group_addrs[65536];
static int group_size[65536];
static int group_capacity[65536];

static unsigned slot_of(uint32_t ip, uint16_t port) {
    uint32_t h = (ip * 2654435761u) ^ (port * 40503u);
    return (h ^ (h >> 16)) & (TABLE_SIZE - 1);
}

static int lookup(uint32_t ip, uint16_t port) {
    for (unsigned s = slot_of(ip, port);; s = (s + 1) & (TABLE_SIZE - 1)) {
        if (table[s].ip == 0) return -1;
        if (table[s].ip == ip && table[s].port == port) return table[s].group;
    }
}

static int add_member(int group, const char *ip_text, int port) {
    struct in_addr ip;
    if (group < 0 || group >= 65536 || inet_pton(AF_INET, ip_text, &ip) != 1 || port <= 0 || port > 65535)
        return -1;
    unsigned s = slot_of(ip.s_addr, htons(port));
    while (table[s].ip != 0) s = (s + 1) & (TABLE_SIZE - 1);
    table[s] = (struct member){ip.s_addr, htons(port), group};
    if (group_size[group] == group_capacity[group]) {
        group_capacity[group] = group_capacity[group] ? 2 * group_capacity[group] : 16;
        group_addrs[group] = realloc(group_addrs[group], group_capacity[group] * sizeof(struct sockaddr_in));
        if (!group_addrs[group]) return -1;
    }
    struct sockaddr_in *a = &group_addrs[group][group_size[group]++];
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr = ip;
    a->sin_port = htons(port);
    return 0;
}

static void send_all(int fd, struct mmsghdr *out, int n) {
    int done = 0;
    while (done < n) {
        int sent = sendmmsg(fd, out + done, n - done, 0);
        if (sent < 0) {
            if (errno == EINTR) continue;
            done++; /* skip the destination that failed */
        } else {
            done += sent;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT < table\n", argv[0]);
        return 2;
    }
    int group, port, members = 0;
    char ip_text[64];
    while (scanf("%d %63s %d", &group, ip_text, &port) == 3) {
        if (add_member(group, ip_text, port) < 0 || ++members >= TABLE_SIZE / 2) {
            fprintf(stderr, "bad or too many members\n");
            return 2;
        }
    }

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int buffer = 4 << 20; /* as server/relay.py's RECEIVE_BUFFER */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    socklen_t length = sizeof local;
    if (fd < 0 || bind(fd, (struct sockaddr *)&local, sizeof local) < 0 ||
        getsockname(fd, (struct sockaddr *)&local, &length) < 0) {
        perror("forwarder: socket");
        return 1;
    }
    printf("port %d\n", ntohs(local.sin_port));
    fflush(stdout);

    static char data[BATCH][MAX_DATAGRAM];
    static struct sockaddr_in from[BATCH];
    static struct iovec in_iov[BATCH], out_iov[BATCH];
    static struct mmsghdr in[BATCH], out[MAX_OUT];
    for (int i = 0; i < BATCH; i++) {
        in_iov[i] = (struct iovec){data[i], MAX_DATAGRAM};
        out_iov[i].iov_base = data[i];
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            in[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                            .msg_iov = &in_iov[i], .msg_iovlen = 1};
        }
        int count = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (count < 0) {
            if (errno == EINTR) continue;
            perror("forwarder: recvmmsg");
            return 1;
        }
        int n = 0;
        for (int i = 0; i < count; i++) {
            int g = lookup(from[i].sin_addr.s_addr, from[i].sin_port);
            if (g < 0 || (in[i].msg_hdr.msg_flags & MSG_TRUNC)) continue;
            out_iov[i].iov_len = in[i].msg_len;
            for (int k = 0; k < group_size[g]; k++) {
                struct sockaddr_in *to = &group_addrs[g][k];
                if (to->sin_addr.s_addr == from[i].sin_addr.s_addr && to->sin_port == from[i].sin_port) continue;
                if (n == MAX_OUT) {
                    send_all(fd, out, n);
                    n = 0;
                }
                out[n].msg_hdr = (struct msghdr){.msg_name = to, .msg_namelen = sizeof *to,
                                                 .msg_iov = &out_iov[i], .msg_iovlen = 1};
                n++;
            }
        }
        send_all(fd, out, n);
    }
}
