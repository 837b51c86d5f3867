/*
 * Sleeps in pause() (or sigsuspend() with "suspend") until SIGUSR1, whose handler sets a flag,
 * and writes "woke RESULT ERRNO FLAG" to DIR/woke once the call returns. A signal that arrives
 * while the process is frozen must end the call with EINTR once it runs again, as it would
 * have without the freeze.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_usr1(int sig)
{
	(void)sig;
	got = 1;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]))
		return 3;
	setsid();
	int suspend = argc > 2 && !strcmp(argv[2], "suspend");
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sigset_t none;
	sigemptyset(&none);
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");
	int r = suspend ? sigsuspend(&none) : pause();
	int e = errno;
	f = fopen("woke.tmp", "w");
	fprintf(f, "woke %d %d %d\n", r, e, (int)got);
	fclose(f);
	rename("woke.tmp", "woke");
	return 0;
}
