"""One module per group of commands. Each exposes COMMANDS = {name: (configure, run)}:
configure(parser) adds the command's options, run(args) -> exit code."""
