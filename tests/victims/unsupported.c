/*
 * unsupported: processes rcr must refuse to dump (for now).
 *
 * Mode "pdeathsig" sets a parent-death signal, "thread" runs a second
 * thread, "child" has a child process. rcr dump must refuse, say why, and
 * leave the process running untouched: after go the parent-death signal is
 * still set, the thread is joined, the child exits 0 and is reaped.
 *
 * usage: unsupported GO_FILE pdeathsig|thread|child
 */
#include "victim.h"
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static void *thread_main(void *go)
{
	wait_for_go(go);
	return (void *)42;
}

int main(int argc, char **argv)
{
	const char *mode;
	pthread_t thread;
	pid_t child = -1;
	void *ret;
	int status;

	need_args(argc, argv, 2, "GO_FILE pdeathsig|thread|child");
	mode = argv[2];
	if (!strcmp(mode, "pdeathsig")) {
		if (prctl(PR_SET_PDEATHSIG, SIGUSR2))
			fail("PR_SET_PDEATHSIG: %s", strerror(errno));
	} else if (!strcmp(mode, "thread")) {
		if (pthread_create(&thread, NULL, thread_main, argv[1]))
			fail("pthread_create");
	} else if (!strcmp(mode, "child")) {
		fflush(stdout);
		child = fork();
		if (child < 0)
			fail("fork: %s", strerror(errno));
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the victim */
			wait_for_go(argv[1]);
			_exit(0);
		}
	} else {
		fail("unknown mode %s", mode);
	}

	ready();
	wait_for_go(argv[1]);

	if (!strcmp(mode, "pdeathsig")) {
		int sig = 0;
		if (prctl(PR_GET_PDEATHSIG, &sig) || sig != SIGUSR2)
			fail("the parent-death signal is %d, not SIGUSR2", sig);
	} else if (!strcmp(mode, "thread")) {
		if (pthread_join(thread, &ret) || ret != (void *)42)
			fail("the thread did not finish properly");
	} else {
		if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
			fail("the child did not exit 0 (status %#x)", status);
	}
	pass();
}
