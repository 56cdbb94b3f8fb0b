// SPDX-License-Identifier: MIT
/* sock_filter.c - the drop-everything socket filter migration freezes TCP sockets with.
 *
 * Theory of operation
 * -------------------
 * A classic filter (SO_ATTACH_FILTER) needs no privileges on most kernels, but some refuse it
 * to a process without CAP_NET_ADMIN, and passt-py drops that capability when a repair helper
 * does TCP_REPAIR. An eBPF program loaded before the privileges go is a file descriptor that
 * can be attached later (SO_ATTACH_BPF) by whoever holds it, so the freeze still works there.
 *
 * The program is two instructions, r0 = 0 and exit: a socket filter's return value is how
 * many bytes of the packet to keep, so every packet is dropped. It calls no helper and
 * touches no map: nothing the verifier could refuse.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <linux/bpf.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "passt_core.h"

/**
 * pc_drop_all_filter() - load a BPF_PROG_TYPE_SOCKET_FILTER program returning 0 (drop)
 * Return: program file descriptor (close-on-exec), or -errno (EPERM without CAP_BPF when
 *	   unprivileged bpf() is disabled, ENOSYS without bpf() at all)
 */
int pc_drop_all_filter(void)
{
#ifdef __NR_bpf
	struct bpf_insn prog[2];
	union bpf_attr attr;
	/* the BPF program's kernel licence tag (no GPL-only helper used), not this file's */
	static const char license[] = "GPL";
	long fd;

	memset(prog, 0, sizeof(prog));
	prog[0].code = BPF_ALU64 | BPF_MOV | BPF_K;	/* r0 = 0: keep no byte of it */
	prog[0].dst_reg = BPF_REG_0;
	prog[0].imm = 0;
	prog[1].code = BPF_JMP | BPF_EXIT;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	attr.insn_cnt = 2;
	attr.insns = (uint64_t)(uintptr_t)prog;
	attr.license = (uint64_t)(uintptr_t)license;
	fd = syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0)
		return -errno;
	return (int)fd;
#else
	return -ENOSYS;
#endif
}
