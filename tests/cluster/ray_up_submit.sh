#!/usr/bin/env bash
# `ray up` -> `ray submit` a smoke study -> `ray down`, end to end on this machine: the cluster
# launcher's `local` provider reaching 127.0.0.1 over SSH, as it would reach your own machines.
#
#   bash tests/cluster/ray_up_submit.sh          (root; needs sshd and rsync: apt-get install openssh-server rsync)
#
# It starts its own sshd on 127.0.0.1:22 with a throw-away host key and client key, and touches
# nothing else: the Ray it starts lives under its own RAY_TMPDIR, and the `ray` that the cluster
# launcher runs over SSH is a shim whose `stop` ends only that Ray (a plain `ray stop` would end
# every Ray on the machine). Everything is undone on exit, also on failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$(command -v python)}
venv_bin=$(dirname "$python")
work=$(mktemp -d /tmp/rayup.XXXXXX)
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
marker="TUNE_CIFAR_RAY_UP_TEST=$work"

cleanup() {
  set +e
  [ -f "$work/cluster.yaml" ] && PATH="$work/bin:$PATH" timeout 120 ray down -y "$work/cluster.yaml" >"$work/down.log" 2>&1
  "$work/bin/ray" stop >/dev/null 2>&1
  [ -f "$work/sshd.pid" ] && kill "$(cat "$work/sshd.pid")" 2>/dev/null
  sed -i "\|$marker|d" ~/.bashrc 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# An sshd of our own on 127.0.0.1:22 (the local provider has no port option).
mkdir -p /run/sshd "$work/bin" "$work/results"
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
cp "$work/id.pub" "$work/authorized_keys"
/usr/sbin/sshd -f /dev/null -o ListenAddress=127.0.0.1 -o Port=22 -o HostKey="$work/host_key" \
  -o AuthorizedKeysFile="$work/authorized_keys" -o PidFile="$work/sshd.pid" -o StrictModes=no \
  -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no

# The `ray` that SSH sessions find first: this venv's Ray, confined to our RAY_TMPDIR.
cat >"$work/bin/ray" <<SHIM
#!/usr/bin/env bash
# Only the Ray that 'start' launches carries RAY_TMPDIR: 'stop' must not end 'ray down' itself.
if [ "\${1:-}" = start ]; then export RAY_TMPDIR=$work/ray; fi
if [ "\${1:-}" = stop ]; then
  for env in /proc/[0-9]*/environ; do
    if tr '\0' '\n' <"\$env" 2>/dev/null | grep -qx "RAY_TMPDIR=$work/ray"; then
      pid=\${env#/proc/}; kill -9 "\${pid%/environ}" 2>/dev/null
    fi
  done
  exit 0
fi
exec "$venv_bin/ray" "\$@"
SHIM
chmod +x "$work/bin/ray"
mkdir -p "$work/ray"

cat >"$work/cluster.yaml" <<YAML
cluster_name: tune-cifar-test-$(basename "$work" | tr -cd 'a-zA-Z0-9')
provider: {type: local, head_ip: 127.0.0.1, worker_ips: []}
auth: {ssh_user: root, ssh_private_key: $work/id}
# Ray runs remote commands through 'bash --login -c -i': put the shim and this venv on that PATH.
setup_commands:
  - grep -qF '$marker' ~/.bashrc || echo 'export PATH=$work/bin:$venv_bin:\$PATH RAY_AUTH_MODE=token $marker' >> ~/.bashrc
head_start_ray_commands:
  - ray start --head --port=$port --num-cpus=2 --include-dashboard=false --disable-usage-stats
worker_start_ray_commands: []
YAML

export PATH="$work/bin:$PATH" RAY_AUTH_MODE=token  # the head requires Ray's token (~/.ray/auth_token)
echo "== ray up" >&2
ray up -y "$work/cluster.yaml" >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
echo "== ray submit" >&2
ray submit "$work/cluster.yaml" "$repo/tune_cifar/run.py" lr -- --smoke --gpus-per-trial 0 \
  --storage-path "$work/results" --address "127.0.0.1:$port" >"$work/submit.log" 2>&1 \
  || { tail -50 "$work/submit.log" >&2; exit 1; }
grep -q "winner (val_acc, max)" "$work/submit.log" || { tail -50 "$work/submit.log" >&2; exit 1; }
"$python" -c "import pandas as pd, sys; df = pd.read_parquet(sys.argv[1]); assert df.trial_id.nunique() == 3, df" \
  "$work/results/lr/results.parquet"
echo "== ray down" >&2
ray down -y "$work/cluster.yaml" >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; exit 1; }
rm -f "$work/cluster.yaml"
echo "ray up / submit / down: OK (3 trials of the lr smoke study ran on the launched cluster)"
