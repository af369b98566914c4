"""`pss-dup completion SHELL`: print the shell completion script (click's own, for bash, zsh, fish, PowerShell).

The scripts are thin shims that call `pss-dup` back with _PSS_DUP_COMPLETE set on every TAB, so PIDs, process
names and snapshot handles are completed live. The copies under completions/ are this command's output.
"""

from __future__ import annotations

import click

from pss_cli.cli.common import output_options
from pss_cli.render.console import Ui

PROG_NAME = "pss-dup"
COMPLETE_VAR = "_PSS_DUP_COMPLETE"
SHELLS = ("bash", "zsh", "fish", "powershell")

#: How to install each script, for the help text and the JSON record.
INSTALL = {
    "bash": 'eval "$(pss-dup completion bash)" in ~/.bashrc, or save it as '
    "~/.local/share/bash-completion/completions/pss-dup (bash 4.4 or later)",
    "zsh": "save it as _pss-dup in a directory on $fpath (before compinit runs), e.g. ~/.zfunc/_pss-dup",
    "fish": "save it as ~/.config/fish/completions/pss-dup.fish",
    "powershell": "save it as pss-dup.ps1 and dot-source it from $PROFILE: . ~/pss-dup.ps1",
}


def completion_source(shell: str) -> str:
    """The completion script click generates for `shell`, exactly as committed under completions/."""
    from click.shell_completion import get_completion_class

    from pss_cli.cli import cli

    complete_class = get_completion_class(shell)
    if complete_class is None:
        raise click.BadParameter(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    return complete_class(cli, {}, PROG_NAME, COMPLETE_VAR).source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@output_options
def completion(ui: Ui, shell: str) -> int:
    """Print the completion script for SHELL (bash, zsh, fish or powershell) on stdout.

    \b
    Install it:
      bash        eval "$(pss-dup completion bash)"      (in ~/.bashrc; bash 4.4 or later)
      zsh         pss-dup completion zsh > ~/.zfunc/_pss-dup   (~/.zfunc on $fpath before compinit)
      fish        pss-dup completion fish > ~/.config/fish/completions/pss-dup.fish
      powershell  pss-dup completion powershell > pss-dup.ps1, then dot-source it from $PROFILE

    Packages install the same scripts under share/ (bash-completion, zsh site-functions, fish
    vendor_completions.d). TARGET and PID complete live PIDs and process names; HANDLE completes the
    snapshots the chosen process holds.
    """
    source = completion_source(shell)
    if ui.machine:
        from pss_cli.render.jsonout import emit

        emit(ui, [{"status": "ok", "shell": shell, "install": INSTALL[shell], "script": source}])
    else:
        click.echo(source, nl=False)
    return 0
