/*
 * The power-cut recorder: an LD_PRELOAD shim for a real `streamd serve`.
 *
 * It records, into one ordered log, everything a power cut could undo in the data
 * directory and every acknowledgement the process sends:
 *   - data written to files under the directory (write, pwrite, pwrite64, writev,
 *     pwritev, pwritev2), with the file offset and the bytes;
 *   - size changes (ftruncate, truncate, O_TRUNC, fallocate, posix_fallocate);
 *   - syncs (fsync, fdatasync, sync_file_range, syncfs, sync), of files and of the
 *     directory itself;
 *   - the namespace (open/openat with O_CREAT that created a file, mkdir, rename,
 *     unlink);
 *   - every write or send to a socket whose data begins with "HTTP/1.1 200", with the
 *     peer's port (the client maps its n-th 200 on a connection to its n-th batch).
 *
 * Environment: POWERCUT_LOG (the log file, created), POWERCUT_DIR (the data directory,
 * which must exist). Without both the shim only passes calls through.
 *
 * Ordering. One mutex orders the log. A file write is performed *and* logged under it,
 * so the log order of writes is the order the kernel saw them. A sync records, under
 * the mutex, the log position when it started, runs unlocked, and is logged when it
 * returned: it covers exactly the records of its file before that start position. A
 * 200 is logged *before* it is sent (a cut just after it must already find its batch
 * durable: the strict reading).
 *
 * The shim's own output goes through syscall(SYS_write) and the helpers it calls
 * (fstat, lseek, readlink, fcntl) are not interposed, so nothing recurses. Records are
 * written whole with one writev on an O_APPEND descriptor, under the mutex.
 *
 * Record: a 64-byte little-endian header (struct rec) and `len` bytes of payload (the
 * data written, or the path(s), or the first bytes of the 200).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <unistd.h>

enum kind {
    K_WRITE = 1,    /* ino, offset, len: data */
    K_TRUNC = 2,    /* ino, offset = new size */
    K_SYNC = 3,     /* ino, aux = start position; fd's inode synced (file or directory) */
    K_RANGE = 4,    /* ino, sync_file_range: recorded, never a durability point */
    K_SYNCALL = 5,  /* aux = start position; sync() / syncfs(): everything */
    K_CREATE = 6,   /* ino, payload = path; a new file (or directory) */
    K_RENAME = 7,   /* ino, aux = length of the old path; payload = old path, new path */
    K_UNLINK = 8,   /* ino, payload = path */
    K_HTTP200 = 9,  /* ino = peer port, aux = fd; payload = the first bytes sent */
    K_ALLOC = 10,   /* ino, offset, aux = length, len = 0; fallocate extending the size */
    K_START = 11,   /* ino = the data directory's inode; payload = its path */
};

struct rec {
    uint32_t kind;
    uint32_t pid;
    uint32_t tid;
    uint32_t _pad;
    uint64_t seq;
    uint64_t ino;
    uint64_t offset;
    uint64_t len;
    uint64_t aux;
    uint64_t _reserved;
};

_Static_assert(sizeof(struct rec) == 64, "the Python reader expects 64-byte headers");

#define MAX_TRACKED 4096
#define HTTP200 "HTTP/1.1 200"
#define HTTP200_LEN 12
#define HTTP_KEEP 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static char dir_path[PATH_MAX];
static size_t dir_len;
static dev_t dir_dev;
static uint64_t seq;
/* Inodes of files and directories under the data directory (0 = free slot). */
static ino_t tracked[MAX_TRACKED];

#define REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__)
REAL(ssize_t, write, int, const void *, size_t);
REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
REAL(ssize_t, pwrite64, int, const void *, size_t, off64_t);
REAL(ssize_t, writev, int, const struct iovec *, int);
REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
REAL(ssize_t, pwritev64, int, const struct iovec *, int, off64_t);
REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int);
REAL(ssize_t, pwritev64v2, int, const struct iovec *, int, off64_t, int);
REAL(ssize_t, send, int, const void *, size_t, int);
REAL(ssize_t, sendto, int, const void *, size_t, int, const struct sockaddr *, socklen_t);
REAL(ssize_t, sendmsg, int, const struct msghdr *, int);
REAL(int, ftruncate, int, off_t);
REAL(int, ftruncate64, int, off64_t);
REAL(int, truncate, const char *, off_t);
REAL(int, truncate64, const char *, off64_t);
REAL(int, fallocate, int, int, off_t, off_t);
REAL(int, fallocate64, int, int, off64_t, off64_t);
REAL(int, posix_fallocate, int, off_t, off_t);
REAL(int, posix_fallocate64, int, off64_t, off64_t);
REAL(int, fsync, int);
REAL(int, fdatasync, int);
REAL(int, sync_file_range, int, off64_t, off64_t, unsigned int);
REAL(int, syncfs, int);
REAL(void, sync, void);
REAL(int, open, const char *, int, ...);
REAL(int, open64, const char *, int, ...);
REAL(int, openat, int, const char *, int, ...);
REAL(int, openat64, int, const char *, int, ...);
REAL(int, creat, const char *, mode_t);
REAL(int, creat64, const char *, mode_t);
REAL(int, rename, const char *, const char *);
REAL(int, renameat, int, const char *, int, const char *);
REAL(int, renameat2, int, const char *, int, const char *, unsigned int);
REAL(int, unlink, const char *);
REAL(int, unlinkat, int, const char *, int);
REAL(int, mkdir, const char *, mode_t);
REAL(int, mkdirat, int, const char *, mode_t);

#define RESOLVE(name) \
    do { \
        if (!real_##name) *(void **)(&real_##name) = dlsym(RTLD_NEXT, #name); \
    } while (0)

static void resolve_all(void) {
    RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64); RESOLVE(writev);
    RESOLVE(pwritev); RESOLVE(pwritev64); RESOLVE(pwritev2); RESOLVE(pwritev64v2);
    RESOLVE(send); RESOLVE(sendto); RESOLVE(sendmsg);
    RESOLVE(ftruncate); RESOLVE(ftruncate64); RESOLVE(truncate); RESOLVE(truncate64);
    RESOLVE(fallocate); RESOLVE(fallocate64); RESOLVE(posix_fallocate);
    RESOLVE(posix_fallocate64);
    RESOLVE(fsync); RESOLVE(fdatasync); RESOLVE(sync_file_range); RESOLVE(syncfs);
    RESOLVE(sync);
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64); RESOLVE(creat);
    RESOLVE(creat64);
    RESOLVE(rename); RESOLVE(renameat); RESOLVE(renameat2); RESOLVE(unlink);
    RESOLVE(unlinkat); RESOLVE(mkdir); RESOLVE(mkdirat);
}

/* -- the log -------------------------------------------------------------------- */

static void die(const char *what) {
    /* A recorder that silently misses records would prove nothing: stop loudly. */
    char msg[256];
    int n = snprintf(msg, sizeof msg, "powercut shim: %s: %s\n", what, strerror(errno));
    if (n > 0) syscall(SYS_write, 2, msg, (size_t)n);
    _exit(97);
}

/* Append one record; the caller holds `lock`. Returns its sequence number. */
static uint64_t emit(uint32_t kind, uint64_t ino, uint64_t offset, uint64_t aux,
                     const struct iovec *payload, int npayload) {
    struct rec r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.pid = (uint32_t)getpid();
    r.tid = (uint32_t)syscall(SYS_gettid);
    r.seq = seq++;
    r.ino = ino;
    r.offset = offset;
    r.aux = aux;
    size_t total = 0;
    for (int i = 0; i < npayload; i++) total += payload[i].iov_len;
    r.len = total;
    /* One buffer: header + payload, written whole (short writes continued). */
    size_t size = sizeof r + total;
    char *buf = malloc(size);
    if (!buf) die("malloc");
    memcpy(buf, &r, sizeof r);
    size_t at = sizeof r;
    for (int i = 0; i < npayload; i++) {
        memcpy(buf + at, payload[i].iov_base, payload[i].iov_len);
        at += payload[i].iov_len;
    }
    size_t done = 0;
    while (done < size) {
        long n = syscall(SYS_write, log_fd, buf + done, size - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("cannot write the log");
        }
        done += (size_t)n;
    }
    free(buf);
    return r.seq;
}

static int active(void) { return log_fd >= 0; }

__attribute__((constructor)) static void init(void) {
    resolve_all();
    const char *log_path = getenv("POWERCUT_LOG");
    const char *dir = getenv("POWERCUT_DIR");
    if (!log_path || !dir || !*log_path || !*dir) return;
    if (!realpath(dir, dir_path)) die("POWERCUT_DIR");
    dir_len = strlen(dir_path);
    struct stat st;
    if (stat(dir_path, &st) != 0 || !S_ISDIR(st.st_mode)) die("POWERCUT_DIR is not a directory");
    dir_dev = st.st_dev;
    tracked[0] = st.st_ino;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, log_path,
                          O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) die("POWERCUT_LOG");
    log_fd = fd;
    struct iovec p = {dir_path, dir_len};
    pthread_mutex_lock(&lock);
    emit(K_START, st.st_ino, 0, 0, &p, 1);
    pthread_mutex_unlock(&lock);
}

/* -- which descriptors and paths are ours ------------------------------------------ */

static int is_tracked(ino_t ino) {
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] == ino) return 1;
    return 0;
}

static void track(ino_t ino) {  /* caller holds the lock */
    if (is_tracked(ino)) return;
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] == 0) { tracked[i] = ino; return; }
    errno = ENOSPC;
    die("too many files in the data directory");
}

static void untrack(ino_t ino) {  /* caller holds the lock */
    for (int i = 1; i < MAX_TRACKED; i++)
        if (tracked[i] == ino) tracked[i] = 0;
}

/* The inode of fd when it is a file or directory under the data directory, else 0. */
static ino_t tracked_fd(int fd, struct stat *st) {
    if (!active() || fd < 0 || fd == log_fd) return 0;
    if (fstat(fd, st) != 0) return 0;
    if (st->st_dev != dir_dev || !(S_ISREG(st->st_mode) || S_ISDIR(st->st_mode))) return 0;
    return is_tracked(st->st_ino) ? st->st_ino : 0;
}

static int under_dir(const char *path) {
    return strncmp(path, dir_path, dir_len) == 0 && (path[dir_len] == '/' || path[dir_len] == 0);
}

/* The absolute path `path` names relative to `dirfd`, without resolving its last
 * component (it may not exist yet, or be a file being renamed). 0 on failure. */
static int absolute(int dirfd, const char *path, char *out) {
    char base[PATH_MAX];
    if (path[0] == '/') {
        base[0] = 0;
    } else if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return 0;
        base[n] = 0;
    }
    /* Resolve the directory part (symlinks, "..") with realpath, keep the last name. */
    char joined[PATH_MAX * 2];
    snprintf(joined, sizeof joined, "%s%s%s", base, path[0] == '/' ? "" : "/", path);
    char *slash = strrchr(joined, '/');
    const char *name = slash + 1;
    char parent[PATH_MAX];
    if (slash == joined) strcpy(parent, "/");
    else {
        *slash = 0;
        if (!realpath(joined, parent)) return 0;
    }
    size_t plen = strlen(parent), nlen = strlen(name);
    int sep = strcmp(parent, "/") != 0;
    if (plen + (size_t)sep + nlen + 1 > PATH_MAX) return 0;
    memcpy(out, parent, plen);
    if (sep) out[plen] = '/';
    memcpy(out + plen + (size_t)sep, name, nlen + 1);
    return 1;
}

/* -- writes ------------------------------------------------------------------------- */

static int is_http200(const struct iovec *iov, int n) {
    char head[HTTP200_LEN];
    size_t got = 0;
    for (int i = 0; i < n && got < HTTP200_LEN; i++) {
        size_t take = iov[i].iov_len < HTTP200_LEN - got ? iov[i].iov_len : HTTP200_LEN - got;
        memcpy(head + got, iov[i].iov_base, take);
        got += take;
    }
    return got == HTTP200_LEN && memcmp(head, HTTP200, HTTP200_LEN) == 0;
}

/* Log a 200 about to be sent on socket fd (before it is sent: the strict reading). */
static void note_send(int fd, const struct iovec *iov, int n) {
    if (!active() || !is_http200(iov, n)) return;
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    uint64_t port = 0;
    if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0) {
        if (peer.ss_family == AF_INET) port = ntohs(((struct sockaddr_in *)&peer)->sin_port);
        else if (peer.ss_family == AF_INET6)
            port = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
    }
    /* Keep the first bytes (status line and some headers) for the reader's checks. */
    struct iovec keep[8];
    int k = 0;
    size_t left = HTTP_KEEP;
    for (int i = 0; i < n && k < 8 && left; i++) {
        size_t take = iov[i].iov_len < left ? iov[i].iov_len : left;
        keep[k].iov_base = iov[i].iov_base;
        keep[k].iov_len = take;
        left -= take;
        k++;
    }
    pthread_mutex_lock(&lock);
    emit(K_HTTP200, port, 0, (uint64_t)fd, keep, k);
    pthread_mutex_unlock(&lock);
}

/* Perform a file write under the lock and log what it wrote. offset < 0: at the file
 * position (or the end, for O_APPEND). `call` does the real write. */
typedef ssize_t (*write_call)(void *ctx);

static ssize_t logged_write(int fd, const struct iovec *iov, int n, off64_t offset,
                            write_call call, void *ctx) {
    struct stat st;
    ino_t ino = tracked_fd(fd, &st);
    if (!ino) {
        if (active() && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) note_send(fd, iov, n);
        return call(ctx);
    }
    pthread_mutex_lock(&lock);
    off64_t at = offset;
    if (at < 0) {
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0 && (flags & O_APPEND)) {
            struct stat now;
            at = fstat(fd, &now) == 0 ? now.st_size : -1;
        } else {
            at = lseek64(fd, 0, SEEK_CUR);
        }
    }
    ssize_t written = call(ctx);
    int saved = errno;
    if (written > 0) {
        if (at < 0) die("cannot tell where a write went");
        /* Only the bytes the kernel took. */
        struct iovec part[64];
        int k = 0;
        size_t left = (size_t)written;
        for (int i = 0; i < n && left; i++) {
            if (k == 64) { errno = E2BIG; die("too many iovecs"); }
            size_t take = iov[i].iov_len < left ? iov[i].iov_len : left;
            part[k].iov_base = iov[i].iov_base;
            part[k].iov_len = take;
            left -= take;
            k++;
        }
        emit(K_WRITE, ino, (uint64_t)at, 0, part, k);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return written;
}

struct wctx {
    int fd;
    const void *buf;
    size_t count;
    off64_t offset;
    const struct iovec *iov;
    int iovcnt;
    int flags;
};

static ssize_t do_write(void *c) { struct wctx *x = c; return real_write(x->fd, x->buf, x->count); }
static ssize_t do_pwrite(void *c) {
    struct wctx *x = c; return real_pwrite(x->fd, x->buf, x->count, (off_t)x->offset);
}
static ssize_t do_pwrite64(void *c) {
    struct wctx *x = c; return real_pwrite64(x->fd, x->buf, x->count, x->offset);
}
static ssize_t do_writev(void *c) { struct wctx *x = c; return real_writev(x->fd, x->iov, x->iovcnt); }
static ssize_t do_pwritev(void *c) {
    struct wctx *x = c; return real_pwritev(x->fd, x->iov, x->iovcnt, (off_t)x->offset);
}
static ssize_t do_pwritev64(void *c) {
    struct wctx *x = c; return real_pwritev64(x->fd, x->iov, x->iovcnt, x->offset);
}
static ssize_t do_pwritev2(void *c) {
    struct wctx *x = c; return real_pwritev2(x->fd, x->iov, x->iovcnt, (off_t)x->offset, x->flags);
}
static ssize_t do_pwritev64v2(void *c) {
    struct wctx *x = c;
    return real_pwritev64v2(x->fd, x->iov, x->iovcnt, x->offset, x->flags);
}

ssize_t write(int fd, const void *buf, size_t count) {
    RESOLVE(write);
    struct iovec v = {(void *)buf, count};
    struct wctx c = {.fd = fd, .buf = buf, .count = count};
    return logged_write(fd, &v, 1, -1, do_write, &c);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    RESOLVE(pwrite);
    struct iovec v = {(void *)buf, count};
    struct wctx c = {.fd = fd, .buf = buf, .count = count, .offset = offset};
    return logged_write(fd, &v, 1, offset, do_pwrite, &c);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    RESOLVE(pwrite64);
    struct iovec v = {(void *)buf, count};
    struct wctx c = {.fd = fd, .buf = buf, .count = count, .offset = offset};
    return logged_write(fd, &v, 1, offset, do_pwrite64, &c);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    RESOLVE(writev);
    struct wctx c = {.fd = fd, .iov = iov, .iovcnt = iovcnt};
    return logged_write(fd, iov, iovcnt, -1, do_writev, &c);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    RESOLVE(pwritev);
    struct wctx c = {.fd = fd, .iov = iov, .iovcnt = iovcnt, .offset = offset};
    return logged_write(fd, iov, iovcnt, offset, do_pwritev, &c);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off64_t offset) {
    RESOLVE(pwritev64);
    struct wctx c = {.fd = fd, .iov = iov, .iovcnt = iovcnt, .offset = offset};
    return logged_write(fd, iov, iovcnt, offset, do_pwritev64, &c);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags) {
    RESOLVE(pwritev2);
    struct wctx c = {.fd = fd, .iov = iov, .iovcnt = iovcnt, .offset = offset, .flags = flags};
    /* offset -1 means "at the file position", as for writev. */
    return logged_write(fd, iov, iovcnt, offset, do_pwritev2, &c);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off64_t offset, int flags) {
    RESOLVE(pwritev64v2);
    struct wctx c = {.fd = fd, .iov = iov, .iovcnt = iovcnt, .offset = offset, .flags = flags};
    return logged_write(fd, iov, iovcnt, offset, do_pwritev64v2, &c);
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    RESOLVE(send);
    struct iovec v = {(void *)buf, len};
    note_send(fd, &v, 1);
    return real_send(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr,
               socklen_t addrlen) {
    RESOLVE(sendto);
    struct iovec v = {(void *)buf, len};
    note_send(fd, &v, 1);
    return real_sendto(fd, buf, len, flags, addr, addrlen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    RESOLVE(sendmsg);
    note_send(fd, msg->msg_iov, (int)msg->msg_iovlen);
    return real_sendmsg(fd, msg, flags);
}

/* -- sizes ---------------------------------------------------------------------------- */

static void note_size(int fd, uint32_t kind, off64_t offset, off64_t length, int rc) {
    /* caller holds the lock; called after the real call succeeded */
    struct stat st;
    ino_t ino = rc == 0 ? tracked_fd(fd, &st) : 0;
    if (ino) emit(kind, ino, (uint64_t)offset, (uint64_t)length, NULL, 0);
}

int ftruncate(int fd, off_t length) {
    RESOLVE(ftruncate);
    pthread_mutex_lock(&lock);
    int rc = real_ftruncate(fd, length);
    int saved = errno;
    note_size(fd, K_TRUNC, length, 0, rc);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int ftruncate64(int fd, off64_t length) {
    RESOLVE(ftruncate64);
    pthread_mutex_lock(&lock);
    int rc = real_ftruncate64(fd, length);
    int saved = errno;
    note_size(fd, K_TRUNC, length, 0, rc);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

static int path_truncate(const char *path, off64_t length, int is64) {
    pthread_mutex_lock(&lock);
    int rc = is64 ? real_truncate64(path, length) : real_truncate(path, (off_t)length);
    int saved = errno;
    if (rc == 0 && active()) {
        struct stat st;
        char abs[PATH_MAX];
        if (absolute(AT_FDCWD, path, abs) && under_dir(abs) && stat(abs, &st) == 0 &&
            is_tracked(st.st_ino))
            emit(K_TRUNC, st.st_ino, (uint64_t)length, 0, NULL, 0);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int truncate(const char *path, off_t length) { RESOLVE(truncate); return path_truncate(path, length, 0); }
int truncate64(const char *path, off64_t length) {
    RESOLVE(truncate64);
    return path_truncate(path, length, 1);
}

static int logged_alloc(int fd, int mode, off64_t offset, off64_t len, int rc) {
    /* caller holds the lock. FALLOC_FL_KEEP_SIZE (1) changes no size: nothing to record.
     * Any other mode (punch hole, zero range...) is not modelled: fail loudly. */
    if (rc != 0) return rc;
    struct stat st;
    if (!tracked_fd(fd, &st)) return rc;
    if (mode & ~1) { errno = EINVAL; die("fallocate mode not modelled"); }
    if (!(mode & 1)) note_size(fd, K_ALLOC, offset, len, 0);
    return rc;
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
    RESOLVE(fallocate);
    pthread_mutex_lock(&lock);
    int rc = real_fallocate(fd, mode, offset, len);
    int saved = errno;
    logged_alloc(fd, mode, offset, len, rc);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int fallocate64(int fd, int mode, off64_t offset, off64_t len) {
    RESOLVE(fallocate64);
    pthread_mutex_lock(&lock);
    int rc = real_fallocate64(fd, mode, offset, len);
    int saved = errno;
    logged_alloc(fd, mode, offset, len, rc);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int posix_fallocate(int fd, off_t offset, off_t len) {
    RESOLVE(posix_fallocate);
    pthread_mutex_lock(&lock);
    int rc = real_posix_fallocate(fd, offset, len);  /* returns the error, not -1 */
    logged_alloc(fd, 0, offset, len, rc);
    pthread_mutex_unlock(&lock);
    return rc;
}

int posix_fallocate64(int fd, off64_t offset, off64_t len) {
    RESOLVE(posix_fallocate64);
    pthread_mutex_lock(&lock);
    int rc = real_posix_fallocate64(fd, offset, len);
    logged_alloc(fd, 0, offset, len, rc);
    pthread_mutex_unlock(&lock);
    return rc;
}

/* -- syncs ---------------------------------------------------------------------------- */

static uint64_t position(void) {
    pthread_mutex_lock(&lock);
    uint64_t at = seq;
    pthread_mutex_unlock(&lock);
    return at;
}

/* A sync covers the records of its inode logged before it started; it counts only once
 * it returned successfully. */
static void note_sync(uint32_t kind, ino_t ino, uint64_t started, off64_t offset, off64_t len) {
    pthread_mutex_lock(&lock);
    emit(kind, ino, (uint64_t)offset, started, NULL, 0);
    (void)len;
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) {
    RESOLVE(fsync);
    struct stat st;
    ino_t ino = tracked_fd(fd, &st);
    uint64_t started = ino ? position() : 0;
    int rc = real_fsync(fd);
    int saved = errno;
    if (ino && rc == 0) note_sync(K_SYNC, ino, started, 0, 0);
    errno = saved;
    return rc;
}

int fdatasync(int fd) {
    RESOLVE(fdatasync);
    struct stat st;
    ino_t ino = tracked_fd(fd, &st);
    uint64_t started = ino ? position() : 0;
    int rc = real_fdatasync(fd);
    int saved = errno;
    if (ino && rc == 0) note_sync(K_SYNC, ino, started, 0, 0);
    errno = saved;
    return rc;
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    RESOLVE(sync_file_range);
    struct stat st;
    ino_t ino = tracked_fd(fd, &st);
    uint64_t started = ino ? position() : 0;
    int rc = real_sync_file_range(fd, offset, nbytes, flags);
    int saved = errno;
    if (ino && rc == 0) note_sync(K_RANGE, ino, started, offset, nbytes);
    errno = saved;
    return rc;
}

int syncfs(int fd) {
    RESOLVE(syncfs);
    uint64_t started = active() ? position() : 0;
    int rc = real_syncfs(fd);
    int saved = errno;
    if (active() && rc == 0) note_sync(K_SYNCALL, 0, started, 0, 0);
    errno = saved;
    return rc;
}

void sync(void) {
    RESOLVE(sync);
    uint64_t started = active() ? position() : 0;
    real_sync();
    if (active()) note_sync(K_SYNCALL, 0, started, 0, 0);
}

/* -- the namespace -------------------------------------------------------------------- */

/* After a successful open of `abs`: track it; log a creation or an O_TRUNC. */
static void note_open(int fd, const char *abs, int existed, int flags) {
    /* caller holds the lock */
    struct stat st;
    if (fd < 0 || !under_dir(abs) || fstat(fd, &st) != 0) return;
    if (!(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) return;
    track(st.st_ino);
    if (!existed) {
        struct iovec p = {(void *)abs, strlen(abs)};
        emit(K_CREATE, st.st_ino, 0, 0, &p, 1);
    } else if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
        emit(K_TRUNC, st.st_ino, 0, 0, NULL, 0);
    }
}

static int logged_open(int dirfd, const char *path, int flags, mode_t mode, int kind) {
    /* kind: 0 open, 1 open64, 2 openat, 3 openat64 */
    char abs[PATH_MAX];
    int ours = active() && absolute(dirfd, path, abs) && under_dir(abs);
    if (!ours) {
        switch (kind) {
            case 0: return real_open(path, flags, mode);
            case 1: return real_open64(path, flags, mode);
            case 2: return real_openat(dirfd, path, flags, mode);
            default: return real_openat64(dirfd, path, flags, mode);
        }
    }
    /* Under the lock: "did it exist" and the open are one step for our threads. */
    pthread_mutex_lock(&lock);
    struct stat before;
    int existed = lstat(abs, &before) == 0;
    int fd;
    switch (kind) {
        case 0: fd = real_open(path, flags, mode); break;
        case 1: fd = real_open64(path, flags, mode); break;
        case 2: fd = real_openat(dirfd, path, flags, mode); break;
        default: fd = real_openat64(dirfd, path, flags, mode); break;
    }
    int saved = errno;
    note_open(fd, abs, existed, flags);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return fd;
}

#define MODE_ARG(flags, mode) \
    do { \
        if ((flags) & (O_CREAT | O_TMPFILE)) { \
            va_list ap; \
            va_start(ap, flags); \
            mode = (mode_t)va_arg(ap, int); \
            va_end(ap); \
        } \
    } while (0)

int open(const char *path, int flags, ...) {
    RESOLVE(open);
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return logged_open(AT_FDCWD, path, flags, mode, 0);
}

int open64(const char *path, int flags, ...) {
    RESOLVE(open64);
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return logged_open(AT_FDCWD, path, flags, mode, 1);
}

int openat(int dirfd, const char *path, int flags, ...) {
    RESOLVE(openat);
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return logged_open(dirfd, path, flags, mode, 2);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    RESOLVE(openat64);
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return logged_open(dirfd, path, flags, mode, 3);
}

int __open_2(const char *path, int flags) { RESOLVE(open); return logged_open(AT_FDCWD, path, flags, 0, 0); }
int __open64_2(const char *path, int flags) {
    RESOLVE(open64);
    return logged_open(AT_FDCWD, path, flags, 0, 1);
}
int __openat_2(int dirfd, const char *path, int flags) {
    RESOLVE(openat);
    return logged_open(dirfd, path, flags, 0, 2);
}
int __openat64_2(int dirfd, const char *path, int flags) {
    RESOLVE(openat64);
    return logged_open(dirfd, path, flags, 0, 3);
}

int creat(const char *path, mode_t mode) {
    RESOLVE(open);
    return logged_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 0);
}

int creat64(const char *path, mode_t mode) {
    RESOLVE(open64);
    return logged_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 1);
}

static int logged_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                         unsigned int flags, int kind) {
    char from[PATH_MAX], to[PATH_MAX];
    int ours = active() && absolute(olddirfd, oldpath, from) && absolute(newdirfd, newpath, to) &&
               (under_dir(from) || under_dir(to));
    if (!ours) {
        if (kind == 0) return real_rename(oldpath, newpath);
        if (kind == 1) return real_renameat(olddirfd, oldpath, newdirfd, newpath);
        return real_renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
    }
    if (!under_dir(from) || !under_dir(to) || flags) {
        /* A file moving in or out, or RENAME_EXCHANGE/WHITEOUT: not modelled. */
        errno = EXDEV;
        die("rename across the data directory's edge (or with flags) is not modelled");
    }
    pthread_mutex_lock(&lock);
    struct stat st, over;
    int had = lstat(from, &st) == 0;
    int replaced = lstat(to, &over) == 0;
    int rc;
    if (kind == 0) rc = real_rename(oldpath, newpath);
    else if (kind == 1) rc = real_renameat(olddirfd, oldpath, newdirfd, newpath);
    else rc = real_renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
    int saved = errno;
    if (rc == 0 && had) {
        track(st.st_ino);
        struct iovec p[2] = {{from, strlen(from)}, {to, strlen(to)}};
        emit(K_RENAME, st.st_ino, 0, strlen(from), p, 2);
        if (replaced && over.st_ino != st.st_ino && over.st_nlink <= 1) untrack(over.st_ino);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int rename(const char *oldpath, const char *newpath) {
    RESOLVE(rename);
    return logged_rename(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0, 0);
}

int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    RESOLVE(renameat);
    return logged_rename(olddirfd, oldpath, newdirfd, newpath, 0, 1);
}

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
              unsigned int flags) {
    RESOLVE(renameat2);
    return logged_rename(olddirfd, oldpath, newdirfd, newpath, flags, 2);
}

static int logged_unlink(int dirfd, const char *path, int flags, int kind) {
    char abs[PATH_MAX];
    int ours = active() && absolute(dirfd, path, abs) && under_dir(abs);
    if (!ours) return kind == 0 ? real_unlink(path) : real_unlinkat(dirfd, path, flags);
    pthread_mutex_lock(&lock);
    struct stat st;
    int had = lstat(abs, &st) == 0;
    int rc = kind == 0 ? real_unlink(path) : real_unlinkat(dirfd, path, flags);
    int saved = errno;
    if (rc == 0 && had) {
        struct iovec p = {abs, strlen(abs)};
        emit(K_UNLINK, st.st_ino, 0, 0, &p, 1);
        /* Its inode number may be reused by any new file, here or elsewhere. */
        if (st.st_nlink <= 1) untrack(st.st_ino);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int unlink(const char *path) { RESOLVE(unlink); return logged_unlink(AT_FDCWD, path, 0, 0); }
int unlinkat(int dirfd, const char *path, int flags) {
    RESOLVE(unlinkat);
    return logged_unlink(dirfd, path, flags, 1);
}

static int logged_mkdir(int dirfd, const char *path, mode_t mode, int kind) {
    char abs[PATH_MAX];
    int ours = active() && absolute(dirfd, path, abs) && under_dir(abs);
    if (!ours) return kind == 0 ? real_mkdir(path, mode) : real_mkdirat(dirfd, path, mode);
    pthread_mutex_lock(&lock);
    int rc = kind == 0 ? real_mkdir(path, mode) : real_mkdirat(dirfd, path, mode);
    int saved = errno;
    struct stat st;
    if (rc == 0 && lstat(abs, &st) == 0) {
        track(st.st_ino);
        struct iovec p = {abs, strlen(abs)};
        emit(K_CREATE, st.st_ino, 0, 1, &p, 1);  /* aux 1: a directory */
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

int mkdir(const char *path, mode_t mode) { RESOLVE(mkdir); return logged_mkdir(AT_FDCWD, path, mode, 0); }
int mkdirat(int dirfd, const char *path, mode_t mode) {
    RESOLVE(mkdirat);
    return logged_mkdir(dirfd, path, mode, 1);
}
