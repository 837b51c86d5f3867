/*
 * Workload for kernel objects shared by two processes: a pipe holding 40 KiB nobody has read,
 * a datagram socketpair with queued messages, an eventfd, and a file description (one
 * offset) used by both. The parent sets them up and forks; on SIGUSR1 (to both) the child
 * reads the pipe to the end, takes the datagrams, bumps the eventfd and writes to the shared
 * file, then exits; the parent checks that the offset moved by what the child wrote and the
 * counter by what it added, and exits 0 (or the failed check's number). Run as: sharedfds DIR
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PIPE_BYTES (40 << 10)
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static void idle(void)
{
	struct timespec ms = { 0, 1000 * 1000 };
	while (!go) nanosleep(&ms, NULL);
}
static unsigned char pat(size_t i) { return (unsigned char)(i * 13 + 5); }

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 99;
	setsid();
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	int p[2], sk[2];
	if (pipe(p) || socketpair(AF_UNIX, SOCK_DGRAM, 0, sk)) return 99;
	static unsigned char buf[PIPE_BYTES];
	for (size_t i = 0; i < PIPE_BYTES; i++) buf[i] = pat(i);
	if (write(p[1], buf, PIPE_BYTES) != PIPE_BYTES) return 99;
	for (int i = 1; i <= 5; i++) {
		char m[64];
		memset(m, 'a' + i, sizeof m);
		if (send(sk[0], m, i * 10, 0) != i * 10) return 99;
	}
	int efd = eventfd(7, 0);
	int f = open("shared.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (efd < 0 || f < 0 || write(f, "header\n", 7) != 7) return 99;

	pid_t c = fork();
	if (c == 0) {
		close(p[1]);
		close(sk[0]);
		FILE *r = fopen("child.ready", "w");
		fclose(r);
		idle();
		static unsigned char got[PIPE_BYTES + 1];
		size_t n = 0;
		ssize_t k;
		/* The parent closed its write end too: we read to end of file. */
		while ((k = read(p[0], got + n, sizeof got - n)) > 0) n += k;
		if (n != PIPE_BYTES) _exit(11);
		for (size_t i = 0; i < n; i++) if (got[i] != pat(i)) _exit(12);
		for (int i = 1; i <= 5; i++) {
			char m[128];
			ssize_t l = recv(sk[1], m, sizeof m, MSG_DONTWAIT);
			if (l != i * 10 || m[0] != 'a' + i) _exit(13);
		}
		if (recv(sk[1], buf, 1, MSG_DONTWAIT) != -1) _exit(14);
		uint64_t one = 5;
		if (write(efd, &one, 8) != 8) _exit(15);
		if (write(f, "child was here\n", 15) != 15) _exit(16);
		_exit(0);
	}
	close(p[0]);
	close(p[1]);
	close(sk[1]);
	while (access("child.ready", F_OK)) usleep(1000);
	FILE *r = fopen("ready.tmp", "w");
	fprintf(r, "%d %d\n", getpid(), c);
	fclose(r);
	rename("ready.tmp", "ready");
	idle();
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st)) return 20;
	if (WEXITSTATUS(st)) return WEXITSTATUS(st);
	/* One file description: the child's write moved our offset too. */
	if (lseek(f, 0, SEEK_CUR) != 7 + 15) return 21;
	uint64_t v;
	if (read(efd, &v, 8) != 8 || v != 12) return 22;
	return 0;
}
