/*
 * nodump: a process that made itself not dumpable (PR_SET_DUMPABLE 0), as
 * set-uid programs and some daemons do. Only a tracer with CAP_SYS_PTRACE
 * may trace it: a non-root rcr of the same uid must refuse it, saying so.
 *
 * usage: nodump GO_FILE
 */
#include "victim.h"
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	need_args(argc, argv, 1, "GO_FILE");
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
		fail("PR_SET_DUMPABLE 0");
	ready();
	wait_for_go(argv[1]);
	if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
		fail("dumpable is %d, want 0", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	pass();
}
