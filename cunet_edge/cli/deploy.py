"""`cunet-edge deploy`: a self-contained bundle of an ONNX artifact for one board, optionally run there over ssh."""

import click

from ..devices.deploy import DeployConfig, SshConfig, check_host, run_remote
from ..devices.deploy import deploy as deploy_bundle
from ..errors import ConfigError
from ._common import config_option


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--device", required=True, help="Device profile name (see `cunet-edge devices`).")
@click.option("--out", required=True, type=click.Path(), help="Directory of the bundle.")
@click.option("--host", help="USER@HOST: copy the bundle there over ssh, build the engine, selfcheck and bench.")
@config_option(DeployConfig, "--tarball/--no-tarball", help="Also write OUT.tar.gz.")
@click.option("--accept-new-host-key", is_flag=True,
              help="Trust a host key seen for the first time (default: only keys already in known_hosts).")
@config_option(run_remote, "--bench-batch", help="Batch of the remote bench.")
@click.option("--ssh-port", type=int, help="ssh port of HOST (default: ssh's, 22 or ~/.ssh/config's).")
@click.option("--identity", type=click.Path(), help="ssh private key file for HOST (ssh -i).")
@click.option("--ssh-option", multiple=True, metavar="KEY=VALUE",
              help="An ssh -o option for HOST, e.g. UserKnownHostsFile=PATH; repeatable. "
                   "Options that run commands (ProxyCommand, ...) belong in ~/.ssh/config.")
@config_option(SshConfig, "--remote-dir", help="Folder on HOST that receives bundles (relative: to the home).")
@config_option(SshConfig, "--remote-python", help="Python on HOST that runs build_engine.py and run.py.")
def deploy(artifact, device, out, host, tarball, accept_new_host_key, bench_batch, ssh_port, identity, ssh_option,
           remote_dir, remote_python):
    """Bundle ARTIFACT (an ONNX or INT8 ONNX export) for a board: model, sampler, run.py, build_engine.py."""
    ssh = SshConfig(port=ssh_port, identity=identity, options=tuple(ssh_option), remote_dir=remote_dir,
                    remote_python=remote_python)
    if host is not None:
        check_host(host)
    elif ssh != SshConfig():
        raise ConfigError("--ssh-port, --identity, --ssh-option, --remote-dir and --remote-python need --host")
    art = deploy_bundle(artifact, DeployConfig(device=device, tarball=tarball), out)
    m = art.manifest
    extra = f" + {art.path}.tar.gz" if tarball else ""
    click.echo(f"{art.path}{extra}  {m['precision']} bundle for {m['device']}: selfcheck tolerance "
               f"{m['tolerance']:g}; on the board run build_engine.py, run.py selfcheck, run.py bench")
    if host is not None:
        results = run_remote(art.path, host, accept_new_host_key=accept_new_host_key, bench_batch=bench_batch,
                             ssh=ssh, echo=lambda line: click.echo(line, err=True))
        click.echo(f"{results}  bench results from {host}")
