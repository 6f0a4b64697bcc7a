/*
 * Exercises libivchan through its header, host and guest in one process
 * over a region file: argv[1] is a private directory, argv[2] the version
 * the library must report. Prints "all checks passed" and exits 0, or
 * names the first failed check and exits 1.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _POSIX_C_SOURCE 200809L

#include <ivchan.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int checks;

#define CHECK(cond)                                                                                   \
    do {                                                                                              \
        checks++;                                                                                     \
        if (!(cond)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    ivchan_last_error_message());                                                     \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

#define CHECK_RC(call, want)                                                                                 \
    do {                                                                                                     \
        ivchan_error rc_ = (call);                                                                           \
        checks++;                                                                                            \
        if (rc_ != (want)) {                                                                                 \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %s (last error: %s)\n", __FILE__, __LINE__, \
                    #call, (int)rc_, ivchan_strerror(rc_), #want, ivchan_last_error_message());              \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static const char *UUID = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: channel_test DIR VERSION\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/fg_%s", dir, UUID);

    /* Version and error names. */
    CHECK(strcmp(ivchan_version(), argv[2]) == 0);
    CHECK(ivchan_protocol_version() == 0x00010001u);
    CHECK(strcmp(ivchan_strerror(IVCHAN_OK), "success") == 0);
    CHECK(strcmp(ivchan_strerror(IVCHAN_ERR_TIMEOUT), "timed out") == 0);
    CHECK(strcmp(ivchan_strerror(12345), "unknown error") == 0);
    CHECK(strcmp(ivchan_strerror(-1), "unknown error") == 0);

    /* Arguments refused with typed codes, nothing opened. */
    ivchan_channel *host = (ivchan_channel *)1, *guest = NULL;
    CHECK_RC(ivchan_host_open(NULL, dir, NULL, 0, IVCHAN_HOST_CREATE, &host), IVCHAN_ERR_NULL_POINTER);
    CHECK(host == NULL);
    CHECK(strstr(ivchan_last_error_message(), "uuid") != NULL);
    CHECK_RC(ivchan_host_open(UUID, dir, NULL, 0, IVCHAN_HOST_CREATE, NULL), IVCHAN_ERR_NULL_POINTER);
    CHECK_RC(ivchan_host_open("not-a-uuid", dir, NULL, 0, IVCHAN_HOST_CREATE, &host), IVCHAN_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ivchan_last_error_message(), "not-a-uuid") != NULL);
    CHECK_RC(ivchan_host_open(UUID, dir, NULL, 3 << 20, IVCHAN_HOST_CREATE, &host), IVCHAN_ERR_INVALID_ARGUMENT);
    CHECK_RC(ivchan_host_open(UUID, dir, NULL, 0, 7, &host), IVCHAN_ERR_INVALID_ARGUMENT);
    CHECK_RC(ivchan_host_open(UUID, dir, NULL, 0, IVCHAN_HOST_OPEN_EXISTING, &host), IVCHAN_ERR_NO_DEVICE);
    CHECK_RC(ivchan_guest_attach_file(path, 0, &guest), IVCHAN_ERR_NO_DEVICE);
    CHECK_RC(ivchan_guest_open(dir, 9, NULL, 0, &guest), IVCHAN_ERR_INVALID_ARGUMENT);
    CHECK_RC(ivchan_guest_open(dir, IVCHAN_SELECT_ADDRESS, NULL, 0, &guest), IVCHAN_ERR_NULL_POINTER);
    CHECK_RC(ivchan_guest_open(dir, IVCHAN_SELECT_ADDRESS, "zz:top", 0, &guest), IVCHAN_ERR_INVALID_ARGUMENT);
    CHECK_RC(ivchan_send(NULL, "x", 1, 0), IVCHAN_ERR_NULL_POINTER);
    CHECK(ivchan_max_message(NULL) == 0);
    ivchan_close(NULL);

    /* Host creates a 1 MiB region; the guest maps the file as it maps BAR2. */
    CHECK_RC(ivchan_host_open(UUID, dir, "ctest", 1 << 20, IVCHAN_HOST_CREATE, &host), IVCHAN_OK);
    CHECK(host != NULL);
    CHECK(strcmp(ivchan_last_error_message(), "") == 0);
    ivchan_channel *second = NULL;
    CHECK_RC(ivchan_host_open(UUID, dir, NULL, 0, IVCHAN_HOST_OPEN_OR_CREATE, &second), IVCHAN_ERR_BUSY);
    /* No guest yet: waiting for one times out (and sets the baseline that
     * the guest's attach then moves). */
    uint64_t epoch = 0;
    CHECK_RC(ivchan_wait_for_peer(host, 0, &epoch), IVCHAN_ERR_TIMEOUT);
    CHECK_RC(ivchan_guest_attach_file(path, 2000, &guest), IVCHAN_OK);
    size_t max = ivchan_max_message(host);
    CHECK(max == (1 << 20) / 4 / 2 - 8);
    CHECK(ivchan_max_message(guest) == max);

    CHECK_RC(ivchan_wait_for_peer(host, 2000, &epoch), IVCHAN_OK);
    CHECK(epoch == ivchan_epoch(guest) && epoch != 0);
    ivchan_peer_event ev;
    CHECK_RC(ivchan_poll_peer(host, NULL), IVCHAN_ERR_NULL_POINTER);
    CHECK_RC(ivchan_poll_peer(host, &ev), IVCHAN_OK);
    CHECK(ev.kind == IVCHAN_PEER_ATTACHED && ev.epoch == ivchan_epoch(guest));
    CHECK_RC(ivchan_poll_peer(host, &ev), IVCHAN_OK);
    CHECK(ev.kind == IVCHAN_PEER_NONE && ev.epoch == 0);
    CHECK_RC(ivchan_peer_epoch(guest, &epoch), IVCHAN_ERR_PEER_CLOSED); /* not observed yet */
    CHECK_RC(ivchan_poll_peer(guest, &ev), IVCHAN_OK);
    CHECK(ev.kind == IVCHAN_PEER_ATTACHED || ev.kind == IVCHAN_PEER_NONE);
    CHECK_RC(ivchan_peer_epoch(guest, &epoch), IVCHAN_OK);
    CHECK(epoch == ivchan_epoch(host));

    /* Copy calls, both ways. */
    char buf[512];
    size_t n = 99;
    CHECK_RC(ivchan_send(host, "hello guest", 11, 1000), IVCHAN_OK);
    CHECK_RC(ivchan_recv(guest, buf, sizeof buf, &n, 1000), IVCHAN_OK);
    CHECK(n == 11 && memcmp(buf, "hello guest", 11) == 0);
    CHECK_RC(ivchan_send(guest, "hi host", 7, 1000), IVCHAN_OK);
    CHECK_RC(ivchan_recv(host, buf, sizeof buf, &n, 1000), IVCHAN_OK);
    CHECK(n == 7 && memcmp(buf, "hi host", 7) == 0);
    CHECK_RC(ivchan_send(host, NULL, 0, 1000), IVCHAN_OK); /* an empty message */
    CHECK_RC(ivchan_recv(guest, buf, sizeof buf, &n, 1000), IVCHAN_OK);
    CHECK(n == 0);

    /* Timeouts: 0 tries once; 50 ms waits about that long. */
    CHECK_RC(ivchan_recv(guest, buf, sizeof buf, &n, 0), IVCHAN_ERR_TIMEOUT);
    double t0 = now_s();
    CHECK_RC(ivchan_recv(guest, buf, sizeof buf, &n, 50), IVCHAN_ERR_TIMEOUT);
    double waited = now_s() - t0;
    CHECK(waited >= 0.045 && waited < 2.0);
    CHECK_RC(ivchan_recv(guest, NULL, 10, &n, 0), IVCHAN_ERR_NULL_POINTER);
    CHECK_RC(ivchan_recv(guest, buf, sizeof buf, NULL, 0), IVCHAN_ERR_NULL_POINTER);
    CHECK_RC(ivchan_send(host, NULL, 5, 0), IVCHAN_ERR_NULL_POINTER);

    /* Too large to send; too large for the buffer (the message stays). */
    char *big = calloc(1, max + 1);
    CHECK(big != NULL);
    CHECK_RC(ivchan_send(host, big, max + 1, 0), IVCHAN_ERR_TOO_LARGE);
    CHECK_RC(ivchan_send(host, big, max, 1000), IVCHAN_OK);
    CHECK_RC(ivchan_recv(guest, buf, 10, &n, 1000), IVCHAN_ERR_BUFFER_TOO_SMALL);
    CHECK(n == max);
    CHECK_RC(ivchan_recv(guest, big, max, &n, 1000), IVCHAN_OK);
    CHECK(n == max);
    free(big);

    /* Zero-copy: reserve, fill, commit part; peek, copy, release. */
    void *room = NULL;
    CHECK_RC(ivchan_commit(guest, 1), IVCHAN_ERR_GRANT_STATE);
    CHECK_RC(ivchan_reserve(guest, 1000, 1000, NULL), IVCHAN_ERR_NULL_POINTER);
    CHECK_RC(ivchan_reserve(guest, max + 1, 0, &room), IVCHAN_ERR_TOO_LARGE);
    CHECK_RC(ivchan_reserve(guest, 1000, 1000, &room), IVCHAN_OK);
    CHECK(room != NULL && ((uintptr_t)room % 8) == 0);
    CHECK_RC(ivchan_reserve(guest, 10, 0, &room), IVCHAN_ERR_GRANT_STATE);
    CHECK(room == NULL);
    CHECK_RC(ivchan_send(guest, "x", 1, 0), IVCHAN_ERR_GRANT_STATE);
    CHECK_RC(ivchan_abandon(guest), IVCHAN_OK);
    CHECK_RC(ivchan_abandon(guest), IVCHAN_ERR_GRANT_STATE);
    CHECK_RC(ivchan_reserve(guest, 1000, 1000, &room), IVCHAN_OK);
    for (int i = 0; i < 1000; i++) {
        ((unsigned char *)room)[i] = (unsigned char)(i * 7 + 3);
    }
    CHECK_RC(ivchan_commit(guest, 1001), IVCHAN_ERR_INVALID_ARGUMENT);
    CHECK_RC(ivchan_commit(guest, 600), IVCHAN_OK);
    CHECK_RC(ivchan_commit(guest, 600), IVCHAN_ERR_GRANT_STATE);
    const void *msg = NULL;
    size_t len = 0;
    CHECK_RC(ivchan_release(host), IVCHAN_ERR_GRANT_STATE);
    CHECK_RC(ivchan_peek(host, 1000, &msg, &len), IVCHAN_OK);
    CHECK(len == 600 && msg != NULL);
    unsigned char copy[600];
    memcpy(copy, msg, len); /* copy once, then check the copy */
    int same = 1;
    for (int i = 0; i < 600; i++) {
        same &= copy[i] == (unsigned char)(i * 7 + 3);
    }
    CHECK(same);
    CHECK_RC(ivchan_recv(host, buf, sizeof buf, &n, 0), IVCHAN_ERR_GRANT_STATE);
    CHECK_RC(ivchan_peek(host, 0, &msg, &len), IVCHAN_ERR_GRANT_STATE);
    CHECK_RC(ivchan_release(host), IVCHAN_OK);
    CHECK_RC(ivchan_peek(host, 0, &msg, &len), IVCHAN_ERR_TIMEOUT);
    CHECK(msg == NULL && len == 0);

    /* Fill the host->guest ring with timeout 0, then drain it in order. */
    unsigned count = 0;
    for (;;) {
        unsigned char m[1000];
        memset(m, 0, sizeof m);
        memcpy(m, &count, sizeof count);
        ivchan_error rc = ivchan_send(host, m, sizeof m, 0);
        if (rc == IVCHAN_ERR_TIMEOUT) {
            break;
        }
        CHECK_RC(rc, IVCHAN_OK);
        count++;
    }
    CHECK(count > 200 && count < 300); /* 256 KiB ring, 1008-byte records */
    for (unsigned i = 0; i < count; i++) {
        unsigned char m[1000];
        CHECK_RC(ivchan_recv(guest, m, sizeof m, &n, 1000), IVCHAN_OK);
        unsigned seq;
        memcpy(&seq, m, sizeof seq);
        CHECK(n == 1000 && seq == i);
    }
    CHECK_RC(ivchan_recv(guest, buf, sizeof buf, &n, 0), IVCHAN_ERR_TIMEOUT);

    /* The guest leaves, then comes back with a new epoch. */
    uint64_t old_epoch = ivchan_epoch(guest);
    ivchan_close(guest);
    guest = NULL;
    CHECK_RC(ivchan_poll_peer(host, &ev), IVCHAN_OK);
    CHECK(ev.kind == IVCHAN_PEER_CLOSED);
    CHECK_RC(ivchan_peer_epoch(host, &epoch), IVCHAN_ERR_PEER_CLOSED);
    CHECK_RC(ivchan_recv(host, buf, sizeof buf, &n, 100), IVCHAN_ERR_PEER_CLOSED);
    CHECK_RC(ivchan_guest_attach_file(path, 2000, &guest), IVCHAN_OK);
    CHECK(ivchan_epoch(guest) > old_epoch);
    CHECK_RC(ivchan_poll_peer(host, &ev), IVCHAN_OK);
    CHECK((ev.kind == IVCHAN_PEER_ATTACHED || ev.kind == IVCHAN_PEER_RESTARTED) && ev.epoch == ivchan_epoch(guest));
    CHECK_RC(ivchan_send(guest, "back", 4, 1000), IVCHAN_OK);
    CHECK_RC(ivchan_recv(host, buf, sizeof buf, &n, 1000), IVCHAN_OK);
    CHECK(n == 4 && memcmp(buf, "back", 4) == 0);

    /* A hostile guest: a misaligned tail in the guest->host ring (part 2 of
     * the part table at 0x58 locates its control block) is a protocol
     * error, and the ring stays poisoned. */
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    uint64_t *region = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(region != MAP_FAILED);
    uint64_t control = region[(0x58 + 2 * 16) / 8];
    CHECK(control >= 4096 && control < (1 << 20) && control % 128 == 0);
    __atomic_store_n(&region[control / 8], UINT64_C(0x1234567), __ATOMIC_RELEASE);
    CHECK_RC(ivchan_recv(host, buf, sizeof buf, &n, 100), IVCHAN_ERR_PROTOCOL);
    CHECK(strlen(ivchan_last_error_message()) > 0);
    CHECK_RC(ivchan_recv(host, buf, sizeof buf, &n, 0), IVCHAN_ERR_PROTOCOL);
    CHECK_RC(ivchan_peek(host, 0, &msg, &len), IVCHAN_ERR_PROTOCOL);
    munmap(region, 1 << 20);
    close(fd);

    ivchan_close(guest);
    ivchan_close(host);
    printf("all checks passed (%d)\n", checks);
    return 0;
}
