/*
 * unsupported: a process rcr must refuse to dump (for now).
 *
 * Mode "pdeathsig" sets a parent-death signal: the root of a dumped tree
 * gets a new parent on restore, so rcr dump must refuse it, say why, and
 * leave the process running untouched: after go the parent-death signal is
 * still set.
 *
 * (Threads and children, refused here once, are dumped now: see threads.c
 * and tree.c.)
 *
 * usage: unsupported GO_FILE pdeathsig
 */
#include "victim.h"
#include <signal.h>
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	const char *mode;
	int sig = 0;

	need_args(argc, argv, 2, "GO_FILE pdeathsig");
	mode = argv[2];
	if (strcmp(mode, "pdeathsig"))
		fail("unknown mode %s", mode);
	if (prctl(PR_SET_PDEATHSIG, SIGUSR2))
		fail("PR_SET_PDEATHSIG: %s", strerror(errno));

	ready();
	wait_for_go(argv[1]);

	if (prctl(PR_GET_PDEATHSIG, &sig) || sig != SIGUSR2)
		fail("the parent-death signal is %d, not SIGUSR2", sig);
	pass();
}
