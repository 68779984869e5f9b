/*
 * LD_PRELOAD shim for the lab's Asterisk: bind() to the wildcard address
 * (0.0.0.0 or [::]) becomes bind() to loopback (127.0.0.1 or [::1]).
 *
 * Why: res_pjsip always creates a pjproject DNS resolver (glibc reports
 * 127.0.0.1 as nameserver even with an empty resolv.conf) whose two UDP
 * sockets bind 0.0.0.0:<random> and [::]:<random>, and Asterisk 22 has no
 * setting to stop it. The lab listens on loopback only, so those sockets are
 * moved there. Every other socket is already bound to 127.0.0.1 by the
 * configs and passes through unchanged.
 *
 * Built inside the Asterisk root by docker/stack.sh (tcc) and in
 * docker/Dockerfile.asterisk.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return syscall(SYS_bind, fd, &in4, (socklen_t)sizeof in4);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
            in6.sin6_addr = in6addr_loopback;
            return syscall(SYS_bind, fd, &in6, (socklen_t)sizeof in6);
        }
    }
    return syscall(SYS_bind, fd, addr, len);
}
