#!/usr/bin/env bash
# Crash soak: kill backup, forget+prune, copy, repair and key commands at
# random moments, N times, while another backup writes to the same
# repository and, from the second round, a reader checks it (`check
# --read-data`) and restores the writer's snapshot of the round before;
# the reader must succeed, exactly; after each kill the repository must
# check clean, every snapshot must restore to exactly what was backed up,
# and the same command run again must succeed. Then byte flips: FLIPS sampled single-byte changes
# in data, index and snapshot objects, each of which `check --read-data`
# must find. One file of the backed-up tree is large enough for the
# large-file pipeline; half the backups are killed within a moment of
# opening it, and a round killed while the victim read it says so.
#
#   scripts/soak.sh N [SEED] [FLIPS]      (FLIPS defaults to 1000)
#
# Everything random comes from SEED (default 1), so a failure replays:
# the output names the round, the command and the delay. TRESOR_BIN picks
# the binary (default: target/release/tresor, built if missing);
# SOAK_DIR the working directory (default: a fresh one under /tmp, removed
# on success). One line per round; the last line is the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?usage: scripts/soak.sh N [SEED] [FLIPS]}
seed=${2:-1}
flips=${3:-1000}
RANDOM=$seed

bin=${TRESOR_BIN:-target/release/tresor}
if [ -z "${TRESOR_BIN:-}" ]; then
  cargo build --release -p tresor-cli >&2
fi
bin=$(realpath "$bin")
work=${SOAK_DIR:-$(mktemp -d /tmp/tresor-soak.XXXXXX)}
mkdir -p "$work"
work=$(realpath "$work")
export TRESOR_REPOSITORY=$work/repo TRESOR_KDF_MEMORY=1M TRESOR_CACHE_DIR=$work/cache
offsite=$work/offsite
printf 'soak password\n' >"$work/pw"
printf 'writer password\n' >"$work/pw-writer"
printf 'offsite password\n' >"$work/pw-offsite"
export TRESOR_PASSWORD_FILE=$work/pw

fail() {
  echo "FAILED: $*" >&2
  echo "work directory kept: $work" >&2
  exit 1
}

# Run tresor; its output in $work/last.log, which a failure shows.
t() { "$bin" "$@" >"$work/last.log" 2>&1; }
must() { t "$@" || fail "tresor $* (round ${round:-setup}): $(cat "$work/last.log")"; }

# A number below $1 in $rnd. Never call it in a command substitution: bash
# reseeds RANDOM in every subshell from the clock, so the seed would not
# replay.
rand_below() { rnd=$(((RANDOM * 32768 + RANDOM) % $1)); }

# Deterministic file contents: AES-CTR keystream of a name.
# (openssl stops on the closed pipe: that is the end, not a failure.)
fill() { { openssl enc -aes-128-ctr -pass "pass:$seed/$2" -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c "$3" >"$1"; }

# A source's content as one hash: relative paths and file hashes.
tree_hash() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0r sha256sum | sha256sum | cut -c1-16); }

# Change a few files of a source tree between rounds: the next backup has
# new data, old snapshots keep theirs.
mutate() {
  local dir=$1 n
  for _ in 1 2 3; do
    rand_below 24
    n=$rnd
    rand_below $((768 * 1024))
    fill "$dir/f$n" "$dir/$round/$n" $((64 * 1024 + rnd))
  done
}

# One file of the source is above the 16 MiB at which backup hands a file's
# chunks to packer threads, so that kills land inside that pipeline too; a
# few MiB of it change each round, in place.
big_mib=20
mutate_big() {
  rand_below $((3 * 1024 * 1024))
  fill "$work/region" "big/$round" $((1024 * 1024 + rnd))
  rand_below $((big_mib - 4))
  dd if="$work/region" of="$work/src/big" bs=1M seek="$rnd" conv=notrunc status=none
}

mkdir -p "$work/src" "$work/writer"
fill "$work/src/big" "src/big" $((big_mib * 1024 * 1024))
for i in $(seq 0 23); do
  fill "$work/src/f$i" "src/$i" $((64 * 1024 + i * 16384))
  fill "$work/writer/f$i" "writer/$i" $((32 * 1024 + i * 8192))
done
must init --pack-size-mib 4
must key add --new-password-file "$work/pw-writer" --label writer
TRESOR_PASSWORD_FILE=$work/pw-offsite must init --repo "$offsite"

# The content each tag's snapshots hold.
declare -A expected

verify_all() {
  local repo=$1 pwfile=$2 what=$3
  TRESOR_PASSWORD_FILE=$pwfile t check --repo "$repo" --no-cache || fail "$what: check of $repo: $(cat "$work/last.log")"
  TRESOR_PASSWORD_FILE=$pwfile t snapshots --repo "$repo" --json || fail "$what: snapshots: $(cat "$work/last.log")"
  local list
  restored=0
  list=$(tail -n1 "$work/last.log" | jq -r '.[] | "\(.id) \(.tags[0] // "-") \(.paths[0])"')
  while read -r id tag path; do
    [ -n "$id" ] || continue
    local want=${expected[$tag]:-}
    [ -n "$want" ] || fail "$what: snapshot $id has the unknown tag $tag"
    rm -rf "$work/out"
    TRESOR_PASSWORD_FILE=$pwfile t restore --repo "$repo" "$id" --target "$work/out" || fail "$what: restore $id: $(cat "$work/last.log")"
    local got
    got=$(tree_hash "$work/out$path")
    [ "$got" = "$want" ] || fail "$what: snapshot $id ($tag) restored to $got, backed up as $want"
    restored=$((restored + 1))
  done <<<"$list"
}

# The reader beside a round, with the writer's slot (no key command touches
# it): a check of the whole repository, then a restore of the writer's
# snapshot of round $1, which no command of this round removes (forget
# keeps the last three), compared with what was backed up.
reader() {
  local out=$work/reader-out
  export TRESOR_PASSWORD_FILE=$work/pw-writer
  "$bin" check --read-data --no-cache >"$work/reader.log" 2>&1 || return 1
  rm -rf "$out"
  "$bin" restore latest --tag "w$1" --no-cache --target "$out" >>"$work/reader.log" 2>&1 || return 1
  [ "$(tree_hash "$out$work/writer")" = "${expected[w$1]}" ] || { echo "the restore of w$1 differs from what was backed up" >>"$work/reader.log"; return 1; }
}

# The kind of command a round kills, in $kind, drawn from the seed.
pick() {
  local kinds=(backup prune copy repair-index repair-snapshots key-add key-passwd key-remove)
  rand_below ${#kinds[@]}
  kind=${kinds[$rnd]}
}

command_for() {
  case $1 in
    backup) echo "backup --tag s$round $work/src" ;;
    prune) echo "forget --keep-last 3 --prune" ;;
    copy) echo "copy --to $offsite --to-password-file $work/pw-offsite" ;;
    repair-index) echo "repair index" ;;
    repair-snapshots) echo "repair snapshots" ;;
    key-add) echo "key add --new-password-file $work/pw-extra --label extra" ;;
    key-passwd) echo "key passwd --new-password-file $work/pw-next" ;;
    key-remove) echo "key remove $(extra_key)" ;;
  esac
}

# An extra slot to remove (one is added if there is none).
extra_key() {
  must key list --json
  local id
  id=$(tail -n1 "$work/last.log" | jq -r '[.[] | select(.label == "extra")][0].id // empty')
  if [ -z "$id" ]; then
    must key add --new-password-file "$work/pw-extra" --label extra
    must key list --json
    id=$(tail -n1 "$work/last.log" | jq -r '[.[] | select(.label == "extra")][0].id')
  fi
  echo "${id:0:12}"
}

# After a killed `key passwd`, the old password or the new one opens.
settle_password() {
  if ! t snapshots; then
    TRESOR_PASSWORD_FILE=$work/pw-next t snapshots || fail "round $round: neither password opens after a killed key passwd"
    cp "$work/pw-next" "$work/pw"
  fi
}

# The moments around a kill are timed without starting a process: `sleep`,
# `date` or `find` each cost milliseconds, about as long as release keeps
# the changed large file open. A FIFO held open both ways never delivers a
# line, so `read -t` on it waits exactly the given time.
mkfifo "$work/tick"
exec 9<>"$work/tick"
pause_ms() {
  local secs
  printf -v secs '%d.%03d' $(($1 / 1000)) $(($1 % 1000))
  read -r -t "$secs" -u 9 || true
}
# Whether process $1 has the large file open (-ef follows /proc's fd links).
has_big() {
  local fd
  for fd in /proc/"$1"/fd/*; do
    [ "$fd" -ef "$work/src/big" ] && return 0
  done
  return 1
}

# Wait until process $1 has the large file open, for at most as long as a
# backup last took (it may have ended first: a zombie has no open files).
# An aimed kill lands 0 to big_window ms after that; the window halves
# (down to 10 ms) whenever the file was closed first, so it follows how long
# this binary keeps the file open (tens of ms in release, far more in debug).
big_window=250
wait_for_big() {
  local until=$((${EPOCHREALTIME//[!0-9]/} + took[backup] * 1000))
  while [ "${EPOCHREALTIME//[!0-9]/}" -lt "$until" ]; do
    has_big "$1" && return
    pause_ms 1
  done
}

# How long each kind of command took when last run to its end: a kill
# lands at a random moment within that, so nearly every one hits mid-run.
declare -A took=([backup]=1500 [copy]=1500 [prune]=900 [repair-index]=900 [repair-snapshots]=900 [key-add]=150 [key-passwd]=150 [key-remove]=150)

printf 'extra password\n' >"$work/pw-extra"
kills=0
readers=0
in_pipeline=0
aimed=0
aimed_in=0
start=$(date +%s)
for round in $(seq 1 "$rounds"); do
  mutate "$work/src"
  mutate_big
  mutate "$work/writer"
  expected[s$round]=$(tree_hash "$work/src")
  expected[w$round]=$(tree_hash "$work/writer")
  pick
  printf 'next password %s\n' "$round" >"$work/pw-next"
  read -r -a args <<<"$(command_for "$kind")"
  rand_below "${took[$kind]}"
  delay=$rnd
  # Half the backups are aimed at the large-file pipeline: their delay
  # counts from the moment the victim opens the large file.
  rand_below 2
  aim=0
  [ "$rnd" = 1 ] && [ "$kind" = backup ] && aim=1
  if [ "$aim" = 1 ]; then
    aimed=$((aimed + 1))
    rand_below $big_window
    delay=$rnd
  fi
  # The concurrent writer opens with its own slot, which no key command touches.
  TRESOR_PASSWORD_FILE=$work/pw-writer "$bin" backup --tag "w$round" "$work/writer" >"$work/writer.log" 2>&1 &
  writer=$!
  readerpid=
  if [ "$round" -gt 1 ]; then
    reader $((round - 1)) &
    readerpid=$!
  fi
  "$bin" "${args[@]}" >/dev/null 2>&1 &
  victim=$!
  outcome="finished before the kill at ${delay} ms"
  if [ "$aim" = 1 ]; then
    wait_for_big "$victim"
    outcome="finished before the kill at ${delay} ms after it opened the large file"
  fi
  pause_ms "$delay"
  # Whether the kill lands inside the large-file pipeline: the victim has
  # the large file open just before it (a backup reads it only there).
  packing=0
  has_big "$victim" && packing=1
  if kill -KILL "$victim" 2>/dev/null; then
    kills=$((kills + 1))
    outcome="killed after ${delay} ms"
    [ "$aim" = 1 ] && outcome="$outcome from the large file's opening"
    if [ "$packing" -gt 0 ]; then
      in_pipeline=$((in_pipeline + 1))
      aimed_in=$((aimed_in + aim))
      outcome="$outcome, inside the large-file pipeline"
    fi
  fi
  if [ "$aim" = 1 ] && [ "$packing" = 0 ] && [ "$big_window" -gt 10 ]; then
    big_window=$((big_window / 2))
  fi
  { wait "$victim"; } 2>/dev/null || true
  wait "$writer" || fail "round $round: the concurrent backup failed: $(cat "$work/writer.log")"
  if [ -n "$readerpid" ]; then
    wait "$readerpid" || fail "round $round: the concurrent reader failed: $(cat "$work/reader.log")"
    readers=$((readers + 1))
  fi
  [ "$kind" = key-passwd ] && settle_password
  verify_all "$TRESOR_REPOSITORY" "$work/pw" "round $round ($kind $outcome)"
  checked=$restored
  if [ "$kind" = copy ]; then
    verify_all "$offsite" "$work/pw-offsite" "round $round (copy $outcome), off-site"
  fi
  # The same command again, to its end.
  [ "$kind" = key-remove ] && read -r -a args <<<"$(command_for "$kind")"
  began=${EPOCHREALTIME//[!0-9]/}
  must "${args[@]}"
  took[$kind]=$(((${EPOCHREALTIME//[!0-9]/} - began) / 1000 + 1))
  [ "$kind" = key-passwd ] && cp "$work/pw-next" "$work/pw"
  echo "round $round: $kind $outcome; check, $checked snapshots restored, rerun ok"
done
kill_secs=$(($(date +%s) - start))

# Byte flips in a small repository of its own, so that each check is quick.
export TRESOR_REPOSITORY=$work/flips
must init --pack-size-mib 4
mkdir -p "$work/flip-src"
for i in 0 1 2; do fill "$work/flip-src/f$i" "flip/$i" $((96 * 1024)); done
must backup "$work/flip-src"
mapfile -t objects < <(cd "$work/flips" && find data index snapshots -type f | sort)
found=0
start=$(date +%s)
for n in $(seq 1 "$flips"); do
  rand_below ${#objects[@]}
  object=${objects[$rnd]}
  file=$work/flips/$object
  size=$(stat -c %s "$file")
  rand_below "$size"
  at=$rnd
  rand_below 255
  mask=$((1 + rnd))
  cp "$file" "$work/flip.orig"
  byte=$(od -An -tu1 -j "$at" -N1 "$file" | tr -d ' ')
  printf "\\x$(printf %02x $((byte ^ mask)))" | dd of="$file" bs=1 seek="$at" conv=notrunc status=none
  if t check --read-data --no-cache; then
    fail "flip $n: byte $at of $object xor $mask went unnoticed by check --read-data"
  fi
  found=$((found + 1))
  cp "$work/flip.orig" "$file"
done
flip_secs=$(($(date +%s) - start))
must check --read-data --no-cache
echo "soak seed $seed: $rounds rounds, $kills commands killed mid-run ($in_pipeline of them backups inside the large-file pipeline; $aimed_in of the $aimed backups aimed at it), every check and restore exact, concurrent readers exact: $readers, every rerun ok (${kill_secs}s); $found of $flips byte flips found by check --read-data (${flip_secs}s)"
[ -n "${SOAK_DIR:-}" ] || rm -rf "$work"
