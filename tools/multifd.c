/* SPDX-License-Identifier: MIT */
/*
 * multifd - command-line front end of libmultifd.
 *
 *   multifd demo [options]          live migration between two local processes,
 *                                   verified byte for byte
 *   multifd send --to URI [options] migrate a synthetic guest or an image
 *   multifd recv [options]          receive one
 *   multifd dump FILE [options]     decode a saved stream, or --check it
 *   multifd tune --to URI [options] recommend channels and a codec for a
 *                                   link to a 'multifd tune --listen' peer
 *   multifd version | help
 *
 * The tool is a VMM in miniature: it uses only <multifd/multifd.h>.  Files:
 * demo.c, sendrecv.c, dump.c and tune.c are the commands, guest.c the
 * guest's RAM and devices, dirty.c its vCPU threads, report.c what is
 * printed, params.c and util.c the command line.
 */
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: multifd COMMAND [OPTIONS]\n"
		"\n"
		"Commands:\n"
		"  demo       live-migrate a synthetic guest between two local processes\n"
		"             while it runs, then verify it byte for byte\n"
		"  send       migrate a synthetic guest or a memory image to 'multifd recv'\n"
		"  recv       receive a guest from 'multifd send'\n"
		"  dump       decode a saved stream (a file: migration), or --check it\n"
		"  tune       measure a link and the codecs, recommend channels and codec\n"
		"  version    print the tool's and the library's versions\n"
		"  help       this text\n"
		"\n"
		"Run 'multifd COMMAND --help' for the options of a command, 'man multifd' for\n"
		"all of them.\n");
}

static int cmd_version(int argc, char **argv)
{
	const char *codecs[32];
	int n = mfd_compress_list(codecs, 32);

	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: multifd version\n\nPrint the versions and the built-in codecs.\n");
		return EXIT_OK;
	}
	if (argc > 1)
		return usage_error("version", "unexpected argument '%s'", argv[1]);
	printf("multifd %s (library %s)\ncompression:", MFD_VERSION_STRING, mfd_version_string());
	for (int i = 0; i < n && i < 32; i++)
		printf(" %s", codecs[i]);
	printf("\n");
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*run)(int argc, char **argv);
	} commands[] = {
		{ "demo", cmd_demo },
		{ "send", cmd_send },
		{ "recv", cmd_recv },
		{ "dump", cmd_dump },
		{ "tune", cmd_tune },
		{ "version", cmd_version },
		{ "--version", cmd_version },
	};

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "help") && argc > 2) {
		/* "multifd help send" is "multifd send --help". */
		char *sub[] = { argv[2], "--help", NULL };

		for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
			if (!strcmp(argv[2], commands[i].name))
				return commands[i].run(2, sub);
	}
	if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return EXIT_OK;
	}
	fprintf(stderr, "multifd: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
