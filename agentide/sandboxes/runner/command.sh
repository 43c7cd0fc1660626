#!/bin/bash
# AgentIDE command wrapper, installed in the sandbox image as /opt/agentide/command.sh and run
# by bash for every command: $1 = command, $2 = command id, $3 = mode.
# Mode "runner": the runner passed the saved cwd/env in already and persists the state that
# the EXIT trap dumps into /tmp/.agentide/ID.{cwd,env} (fewer forks on the fast path).
# Mode "standalone" (the host's one-exec-per-command fallback for images without the runner):
# the wrapper loads and saves /workspace/.agentide/{cwd,env} itself.
# Shell variables start with __agentide_ to stay out of the user's way; only exported
# variables are saved.
__agentide_cmd="$1"; __agentide_id="$2"; __agentide_mode="$3"; set --
__agentide_run=/tmp/.agentide; __agentide_state=/workspace/.agentide
builtin read -r _ _ _ _ __agentide_pgid _ < /proc/$$/stat
builtin echo "$__agentide_pgid" > "$__agentide_run/$__agentide_id.pgid" 2>/dev/null
# Make a command the OOM killer's first choice, before the runner or the container's init.
builtin echo 1000 > /proc/$$/oom_score_adj 2>/dev/null
if [ "$__agentide_mode" = standalone ]; then
    if [ -r "$__agentide_state/env" ]; then
        for __agentide_v in $(compgen -e); do
            [ "$__agentide_v" = AGENTIDE_COMMAND_ID ] || unset "$__agentide_v"
        done
        __agentide_n=0; __agentide_size=0; __agentide_skipped=
        while IFS= builtin read -r -d '' __agentide_kv; do
            # Loader and shell-startup variables are never carried over, and the
            # environment is bounded (runner.py REFUSED_ENV, MAX_ENV_* say why).
            case "${__agentide_kv%%=*}" in
                LD_*|BASH_FUNC_*|BASH_ENV|ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|\
                PYTHONSTARTUP|PYTHONINSPECT|PERL5OPT|NODE_OPTIONS|RUBYOPT|GCONV_PATH|\
                LOCPATH|HOSTALIASES)
                    __agentide_skipped="$__agentide_skipped ${__agentide_kv%%=*}"; continue ;;
            esac
            __agentide_len=$(( ${#__agentide_kv} + 1 ))
            if (( __agentide_n >= 256 || __agentide_len > 32768 + 256 ||
                  __agentide_size + __agentide_len > 131072 )); then
                __agentide_skipped="$__agentide_skipped ${__agentide_kv%%=*}"; continue
            fi
            __agentide_n=$(( __agentide_n + 1 )); __agentide_size=$(( __agentide_size + __agentide_len ))
            builtin export "$__agentide_kv" 2>/dev/null
        done < "$__agentide_state/env"
        [ -z "$__agentide_skipped" ] || builtin echo "agentide: not kept from the saved" \
            "environment:${__agentide_skipped:0:2000} (loader/startup variables or past its bounds)" >&2
        unset __agentide_v __agentide_kv __agentide_n __agentide_size __agentide_len __agentide_skipped
    fi
    if [ -r "$__agentide_state/cwd" ]; then
        IFS= builtin read -r -d '' __agentide_cwd < "$__agentide_state/cwd"
        builtin cd -- "$__agentide_cwd" 2>/dev/null || builtin cd /workspace
        unset __agentide_cwd
    fi
    __agentide_out="$__agentide_state"
    mkdir -p "$__agentide_out" 2>/dev/null
else
    __agentide_out="$__agentide_run"
fi
__agentide_save() {
    __agentide_rc=$?
    # Dump to the runner's dir, or to the workspace when /tmp is full.
    for __agentide_dir in "$__agentide_out" "$__agentide_state"; do
        { builtin printf '%s\0' "$PWD" > "$__agentide_dir/$__agentide_id.cwd" &&
          env -0 -u PWD -u OLDPWD -u SHLVL -u _ -u AGENTIDE_COMMAND_ID \
              > "$__agentide_dir/$__agentide_id.env"; } 2>/dev/null && break
        rm -f "$__agentide_dir/$__agentide_id.env" "$__agentide_dir/$__agentide_id.cwd" 2>/dev/null
        __agentide_out="$__agentide_state"
    done
    if [ "$__agentide_mode" = standalone ]; then
        { mv -f "$__agentide_out/$__agentide_id.env" "$__agentide_state/env" &&
          mv -f "$__agentide_out/$__agentide_id.cwd" "$__agentide_state/cwd"; } 2>/dev/null
        rm -f "$__agentide_out/$__agentide_id.env" "$__agentide_out/$__agentide_id.cwd" 2>/dev/null
    fi
    return $__agentide_rc
}
trap __agentide_save EXIT
eval "$__agentide_cmd"
