/*
 * A guest agent in C over libivchan: the same conversation as the Rust
 * ivchan-guest-agent (examples/src/agent.rs), so the Rust host agent
 * (ivchan-host-agent --exchange N --echo M) completes a checked exchange
 * with it.
 *
 *   hello NONCE   -> ok hello NONCE (once per nonce; starts a session)
 *   exchange N    both sides send traffic messages 0..N and check every one
 *   echo N        the host sends traffic 0..N; each comes back as it came
 *   ping N        N round trips of one small message
 *   quit          -> ok quit, exit 0
 *
 * Commands count only from the host session (its epoch) this agent said
 * hello to. Traffic: message SEQ is traffic_len(SEQ) bytes (1 B..64 KiB):
 * SEQ little-endian in the first 8 bytes, a checksum of bytes 16.. in
 * bytes 8..16 (messages over 16 bytes), then a pattern
 * (testkit/src/traffic.rs, testkit/src/checksum.rs).
 *
 * Received bytes are shared memory a hostile host could change while we
 * read them: every message is copied out once, released, and only the
 * copy is checked and used.
 *
 * Usage: guest_agent [--region-file PATH | --address BDF | --name NAME]
 *                    [--sysfs DIR] [--wait SECS] [--stall SECS]
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _POSIX_C_SOURCE 200809L

#include <ivchan.h>

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TRAFFIC (64 * 1024)
#define BUF_LEN (MAX_TRAFFIC + 64)

/* ---- traffic (testkit/src/traffic.rs) ---- */

static uint64_t mix(uint64_t x) {
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

static size_t traffic_len(uint64_t seq) {
    uint64_t r = mix(seq);
    uint64_t bits = r % 17;
    return (size_t)(1 + ((r >> 8) % (UINT64_C(1) << bits)));
}

static void put_le64(unsigned char *dst, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dst[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint64_t get_le64(const unsigned char *src) {
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++) {
        v |= (uint64_t)src[i] << (8 * i);
    }
    return v;
}

static uint64_t checksum(const unsigned char *p, size_t n) {
    const uint64_t prime = UINT64_C(0x00000100000001b3);
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = (h ^ get_le64(p + i)) * prime;
    }
    for (; i < n; i++) {
        h = (h ^ p[i]) * prime;
    }
    return h;
}

static uint64_t pattern_word(uint64_t base, size_t i) {
    return base ^ ((uint64_t)i * UINT64_C(0x9e3779b97f4a7c15));
}

static void pattern(uint64_t seq, unsigned char *dst, size_t n) {
    uint64_t base = mix(seq ^ 0x5555);
    for (size_t i = 0; i * 8 < n; i++) {
        size_t take = n - i * 8 < 8 ? n - i * 8 : 8;
        put_le64(dst + i * 8, pattern_word(base, i), take);
    }
}

static int pattern_matches(uint64_t seq, const unsigned char *got, size_t n) {
    uint64_t base = mix(seq ^ 0x5555);
    unsigned char want[8];
    for (size_t i = 0; i * 8 < n; i++) {
        size_t take = n - i * 8 < 8 ? n - i * 8 : 8;
        put_le64(want, pattern_word(base, i), take);
        if (memcmp(want, got + i * 8, take) != 0) {
            return 0;
        }
    }
    return 1;
}

static void traffic_build(uint64_t seq, unsigned char *dst, size_t n) {
    size_t head = n < 8 ? n : 8;
    put_le64(dst, seq, head);
    if (n > 16) {
        pattern(seq, dst + 16, n - 16);
        put_le64(dst + 8, checksum(dst + 16, n - 16), 8);
    } else if (n > 8) {
        pattern(seq, dst + 8, n - 8);
    }
}

/* 0 when `msg` is traffic message `seq`; otherwise writes why into `why`. */
static int traffic_check(uint64_t seq, const unsigned char *msg, size_t n, char *why, size_t why_len) {
    size_t want = traffic_len(seq);
    if (n != want) {
        snprintf(why, why_len, "message %llu: %zu bytes, expected %zu", (unsigned long long)seq, n, want);
        return -1;
    }
    size_t head = want < 8 ? want : 8;
    unsigned char seq_bytes[8];
    put_le64(seq_bytes, seq, 8);
    if (memcmp(msg, seq_bytes, head) != 0) {
        snprintf(why, why_len, "message %llu: wrong sequence number (reordered or lost?)", (unsigned long long)seq);
        return -1;
    }
    if (want > 16 && get_le64(msg + 8) != checksum(msg + 16, want - 16)) {
        snprintf(why, why_len, "message %llu: checksum mismatch", (unsigned long long)seq);
        return -1;
    }
    size_t body = want > 16 ? 16 : head;
    if (!pattern_matches(seq, msg + body, want - body)) {
        snprintf(why, why_len, "message %llu: contents differ", (unsigned long long)seq);
        return -1;
    }
    return 0;
}

/* ---- the agent ---- */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Waits a little while nothing moves: yield first, then short sleeps. */
static void idle(unsigned *spins) {
    if (*spins < 64) {
        (*spins)++;
        sched_yield();
    } else {
        struct timespec t = {0, 50 * 1000};
        nanosleep(&t, NULL);
    }
}

static void fail_call(const char *what, ivchan_error rc) {
    fprintf(stderr, "guest_agent: %s: %s (%s)\n", what, ivchan_strerror(rc), ivchan_last_error_message());
}

/* Sends one reply, waiting through a host that is away or restarting. */
static int send_patiently(ivchan_channel *ch, const char *text, double stall) {
    double start = now_s();
    for (;;) {
        ivchan_error rc = ivchan_send(ch, text, strlen(text), 1000);
        if (rc == IVCHAN_OK) {
            return 0;
        }
        if ((rc != IVCHAN_ERR_TIMEOUT && rc != IVCHAN_ERR_PEER_CLOSED && rc != IVCHAN_ERR_PEER_SILENT &&
             rc != IVCHAN_ERR_PEER_RESTARTED) ||
            now_s() - start > stall) {
            fail_call("send", rc);
            return -1;
        }
    }
}

/*
 * Sends traffic 0..n and checks traffic 0..n coming in, both at once (both
 * rings may fill). With `echo`, returns each message received instead.
 * Sends through the zero-copy calls: reserve, fill, commit.
 */
static int exchange(ivchan_channel *ch, uint64_t n, int echo, double stall, char *err, size_t err_len) {
    static unsigned char out[BUF_LEN], in[BUF_LEN];
    uint64_t sent = 0, got = 0;
    size_t held = 0;
    int holding = 0;
    unsigned spins = 0;
    double last = now_s();
    while (sent < n || got < n) {
        int progress = 0;
        if (echo) {
            if (holding) {
                ivchan_error rc = ivchan_send(ch, out, held, 0);
                if (rc == IVCHAN_OK) {
                    holding = 0;
                    sent++;
                    progress = 1;
                } else if (rc != IVCHAN_ERR_TIMEOUT) {
                    snprintf(err, err_len, "send: %s", ivchan_last_error_message());
                    return -1;
                }
            }
        } else if (sent < n) {
            size_t len = traffic_len(sent);
            void *room = NULL;
            ivchan_error rc = ivchan_reserve(ch, len, 0, &room);
            if (rc == IVCHAN_OK) {
                /* Built privately, then copied in: nothing is read back from
                 * the shared bytes. */
                traffic_build(sent, out, len);
                memcpy(room, out, len);
                rc = ivchan_commit(ch, len);
                if (rc != IVCHAN_OK) {
                    snprintf(err, err_len, "commit: %s", ivchan_last_error_message());
                    return -1;
                }
                sent++;
                progress = 1;
            } else if (rc != IVCHAN_ERR_TIMEOUT) {
                snprintf(err, err_len, "reserve: %s", ivchan_last_error_message());
                return -1;
            }
        }
        if (got < n && !holding) {
            const void *msg = NULL;
            size_t len = 0;
            ivchan_error rc = ivchan_peek(ch, 0, &msg, &len);
            if (rc == IVCHAN_OK) {
                if (len > sizeof in) {
                    snprintf(err, err_len, "message %llu: %zu bytes", (unsigned long long)got, len);
                    ivchan_release(ch);
                    return -1;
                }
                /* Copy once, release, then check the copy. */
                memcpy(in, msg, len);
                rc = ivchan_release(ch);
                if (rc != IVCHAN_OK) {
                    snprintf(err, err_len, "release: %s", ivchan_last_error_message());
                    return -1;
                }
                if (traffic_check(got, in, len, err, err_len) != 0) {
                    return -1;
                }
                if (echo) {
                    memcpy(out, in, len);
                    held = len;
                    holding = 1;
                }
                got++;
                progress = 1;
            } else if (rc != IVCHAN_ERR_TIMEOUT) {
                snprintf(err, err_len, "peek: %s", ivchan_last_error_message());
                return -1;
            }
        }
        if (progress) {
            spins = 0;
            last = now_s();
            continue;
        }
        if (now_s() - last > stall) {
            snprintf(err, err_len, "stalled for %.0f s after sending %llu and receiving %llu of %llu", stall,
                     (unsigned long long)sent, (unsigned long long)got, (unsigned long long)n);
            return -1;
        }
        ivchan_peer_event ev;
        ivchan_error rc = ivchan_poll_peer(ch, &ev);
        if (rc != IVCHAN_OK) {
            snprintf(err, err_len, "poll: %s", ivchan_last_error_message());
            return -1;
        }
        if (ev.kind == IVCHAN_PEER_CLOSED || ev.kind == IVCHAN_PEER_RESTARTED) {
            snprintf(err, err_len, "peer %s after %llu sent, %llu received",
                     ev.kind == IVCHAN_PEER_CLOSED ? "closed" : "restarted", (unsigned long long)sent,
                     (unsigned long long)got);
            return -1;
        }
        idle(&spins);
    }
    return 0;
}

static int pong(ivchan_channel *ch, uint64_t count, double stall, char *err, size_t err_len) {
    unsigned char buf[64];
    int64_t ms = (int64_t)(stall * 1000);
    for (uint64_t i = 0; i < count; i++) {
        size_t n = 0;
        ivchan_error rc = ivchan_recv(ch, buf, sizeof buf, &n, ms);
        if (rc == IVCHAN_OK) {
            rc = ivchan_send(ch, buf, n, ms);
        }
        if (rc != IVCHAN_OK) {
            snprintf(err, err_len, "ping %llu: %s", (unsigned long long)i, ivchan_last_error_message());
            return -1;
        }
    }
    return 0;
}

/* A decimal count, or -1. */
static int parse_count(const char *s, uint64_t *out) {
    char *end = NULL;
    if (s == NULL || *s < '0' || *s > '9') {
        return -1;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0') {
        return -1;
    }
    *out = v;
    return 0;
}

static int serve(ivchan_channel *ch, double stall) {
    static unsigned char buf[BUF_LEN];
    char line[4096], answer[4200], err[512], last_hello[256] = "";
    uint64_t session = 0, host = 0;
    int have_session = 0;
    for (;;) {
        const void *msg = NULL;
        size_t n = 0;
        ivchan_error rc = ivchan_peek(ch, 1000, &msg, &n);
        if (rc == IVCHAN_ERR_TIMEOUT || rc == IVCHAN_ERR_PEER_RESTARTED) {
            continue;
        }
        if (rc == IVCHAN_ERR_PEER_CLOSED || rc == IVCHAN_ERR_PEER_SILENT) {
            /* The host went away or is restarting: wait for it. */
            struct timespec t = {0, 20 * 1000 * 1000};
            nanosleep(&t, NULL);
            continue;
        }
        if (rc != IVCHAN_OK) {
            fail_call("peek", rc);
            return -1;
        }
        if (n >= sizeof line) {
            ivchan_release(ch);
            snprintf(answer, sizeof answer, "err unexpected %zu-byte message", n);
            if (send_patiently(ch, answer, stall) != 0) {
                return -1;
            }
            continue;
        }
        /* Copy once, then work on the copy only. */
        memcpy(buf, msg, n);
        rc = ivchan_release(ch);
        if (rc != IVCHAN_OK) {
            fail_call("release", rc);
            return -1;
        }
        memcpy(line, buf, n);
        line[n] = '\0';
        if (strlen(line) != n) {
            continue; /* not a command line (an interior NUL) */
        }
        char *save = NULL;
        char *verb = strtok_r(line, " \t\r\n", &save);
        char *arg = verb ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        char *extra = arg ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        if (verb == NULL) {
            continue;
        }
        /* The host's session as of this message. */
        ivchan_peer_event ev;
        do {
            rc = ivchan_poll_peer(ch, &ev);
        } while (rc == IVCHAN_OK && ev.kind != IVCHAN_PEER_NONE);
        int host_known = ivchan_peer_epoch(ch, &host) == IVCHAN_OK;
        int is_hello = strcmp(verb, "hello") == 0 && arg != NULL && extra == NULL;
        if (!is_hello && !(have_session && host_known && session == host)) {
            have_session = 0;
            continue;
        }
        uint64_t count = 0;
        int ok = -1;
        err[0] = '\0';
        if (is_hello) {
            if (strcmp(arg, last_hello) == 0) {
                continue;
            }
            snprintf(last_hello, sizeof last_hello, "%s", arg);
            session = host;
            have_session = host_known;
            snprintf(answer, sizeof answer, "ok hello %s", arg);
            ok = 0;
        } else if ((strcmp(verb, "exchange") == 0 || strcmp(verb, "echo") == 0) && extra == NULL) {
            if (parse_count(arg, &count) != 0) {
                snprintf(err, sizeof err, "bad count \"%s\"", arg ? arg : "");
            } else if (exchange(ch, count, verb[1] == 'c', stall, err, sizeof err) == 0) {
                snprintf(answer, sizeof answer, "ok %s %llu", verb, (unsigned long long)count);
                ok = 0;
                fprintf(stderr, "guest_agent: %s %llu checked\n", verb, (unsigned long long)count);
            }
        } else if (strcmp(verb, "ping") == 0 && extra == NULL) {
            if (parse_count(arg, &count) != 0) {
                snprintf(err, sizeof err, "bad count \"%s\"", arg ? arg : "");
            } else if (pong(ch, count, stall, err, sizeof err) == 0) {
                snprintf(answer, sizeof answer, "ok ping %llu", (unsigned long long)count);
                ok = 0;
            }
        } else if (strcmp(verb, "quit") == 0 && arg == NULL) {
            return send_patiently(ch, "ok quit", stall);
        } else {
            snprintf(err, sizeof err, "unknown command \"%s\" (the C agent has no file transfer)", verb);
        }
        if (ok != 0) {
            fprintf(stderr, "guest_agent: %s\n", err);
            snprintf(answer, sizeof answer, "err %s", err);
        }
        if (send_patiently(ch, answer, stall) != 0) {
            return -1;
        }
    }
}

static void usage(void) {
    fprintf(stderr, "usage: guest_agent [--region-file PATH | --address BDF | --name NAME] [--sysfs DIR] "
                    "[--wait SECS] [--stall SECS]\n");
}

int main(int argc, char **argv) {
    const char *region_file = NULL, *sysfs = NULL, *value = NULL;
    uint32_t select = IVCHAN_SELECT_IDENTITY;
    double wait = 120, stall = 30;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL) {
            usage();
            return 2;
        }
        i++;
        if (strcmp(opt, "--region-file") == 0) {
            region_file = val;
        } else if (strcmp(opt, "--address") == 0) {
            select = IVCHAN_SELECT_ADDRESS;
            value = val;
        } else if (strcmp(opt, "--name") == 0) {
            select = IVCHAN_SELECT_NAME;
            value = val;
        } else if (strcmp(opt, "--sysfs") == 0) {
            sysfs = val;
        } else if (strcmp(opt, "--wait") == 0) {
            wait = atof(val);
        } else if (strcmp(opt, "--stall") == 0) {
            stall = atof(val);
        } else {
            usage();
            return 2;
        }
    }
    fprintf(stderr, "guest_agent: libivchan %s (protocol %u.%u)\n", ivchan_version(),
            (unsigned)(ivchan_protocol_version() >> 16), (unsigned)(ivchan_protocol_version() & 0xffff));
    ivchan_channel *ch = NULL;
    int64_t wait_ms = (int64_t)(wait * 1000);
    ivchan_error rc = region_file ? ivchan_guest_attach_file(region_file, wait_ms, &ch)
                                  : ivchan_guest_open(sysfs, select, value, wait_ms, &ch);
    if (rc != IVCHAN_OK) {
        fail_call("open", rc);
        return 1;
    }
    fprintf(stderr, "guest_agent: attached (epoch %llu), max message %zu bytes\n",
            (unsigned long long)ivchan_epoch(ch), ivchan_max_message(ch));
    int status = serve(ch, stall);
    ivchan_close(ch);
    if (status == 0) {
        fprintf(stderr, "guest_agent: quit\n");
    }
    return status == 0 ? 0 : 1;
}
