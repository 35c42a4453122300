"""The `trit` command: a thin layer over the engine's Python API."""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path

import click

from .paths import paths

VERSION = "0.1.0"


def friendly_errors(fn):
    """User mistakes and Ctrl-C end in one line on stderr, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from engine import EngineError

        try:
            return fn(*args, **kwargs)
        except EngineError as e:
            click.echo(f"trit: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("trit: interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            click.echo(f"trit: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", err=True)
            sys.exit(1)

    return wrapper


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="trit")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Trit: an offline, private assistant running BitNet b1.58 on your CPU."""
    if ctx.invoked_subcommand is None:
        # The chat app arrives with the conversation layer; until then, say what there is.
        click.echo(ctx.get_help())


@cli.command("paths")
def paths_cmd() -> None:
    """Print where Trit keeps models, settings and caches (TRIT_HOME moves them all)."""
    p = paths()
    for name, value in (("data", p.data), ("models", p.models), ("config", p.config), ("cache", p.cache)):
        click.echo(f"{name:7} {value}")


def synthetic_folder(preset: str, seed: int) -> Path:
    """A random model of a preset's shape, written once into the cache and reused."""
    from engine import synthetic

    if preset not in synthetic.PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(synthetic.PRESETS)}")
    folder = paths().cache / "synthetic" / f"{preset}-seed{seed}"
    if not (folder / "config.json").exists():
        click.echo(f"writing a random {preset} model to {folder} (once)…", err=True)
        synthetic.write_model(folder, preset, seed=seed, overwrite=True)
    return folder


@cli.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--synthetic", "preset", metavar="PRESET", help="Benchmark a random model of this shape: tiny, small, 2b4t.")
@click.option("--threads", "-t", type=click.IntRange(min=1), help="Threads (default: every core).")
@click.option("--head", type=click.Choice(["bf16", "q8", "q4"]), default="q4", show_default=True,
              help="Output head: the exact bf16 embedding, or an 8- or 4.5-bit copy derived once (best logits exact).")
@click.option("--ternary", type=click.Choice(["auto", "tq2", "t5"]), default="auto", show_default=True,
              help="Ternary weights: the checkpoint's 2-bit packing, a derived 1.6-bit copy, or what the CPU runs best.")
@click.option("--pp", "n_prompt", default=512, show_default=True, type=click.IntRange(min=0), help="Prompt tokens.")
@click.option("--tg", "n_gen", default=128, show_default=True, type=click.IntRange(min=0), help="Generated tokens.")
@click.option("--ctx", "long_context", default=0, type=click.IntRange(min=0),
              help="Also decode --tg tokens after filling this many positions (memory of a full conversation).")
@click.option("--repetitions", "-r", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--vs", "versus", type=click.Choice(["llama.cpp"]),
              help="Then run llama.cpp (llama-cpp-python) on the same weights as GGUF TQ2_0 and TQ1_0; print the ratios.")
@friendly_errors
def bench(model, preset, threads, head, ternary, n_prompt, n_gen, long_context, repetitions, as_json,
          versus=None) -> None:
    """Measure prompt processing (ppN) and generation (tgN) speed in tokens/s, against the memory bus."""
    from engine import bench as engine_bench

    if (model is None) == (preset is None):
        raise click.UsageError("give a model folder or --synthetic PRESET")
    if long_context and long_context <= n_gen:
        raise click.UsageError("--ctx must be larger than --tg")
    folder = synthetic_folder(preset, 0) if preset else model
    if versus:
        from engine import bench_llamacpp

        bench_llamacpp.require(folder)  # one clear line now, not after Trit's own run
    r = engine_bench.run(folder, threads=threads, head=head, ternary=ternary, n_prompt=n_prompt, n_gen=n_gen,
                         repetitions=repetitions, long_context=long_context)
    vs = bench_llamacpp.run(folder, threads=r.threads, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                            log=lambda m: click.echo(m, err=True)) if versus else None
    if as_json:
        click.echo(json.dumps({**r.to_dict(), **({"vs_llama_cpp": bench_llamacpp.comparison(r, vs)} if vs else {})},
                              indent=2))
        return
    runs = lambda values: ", ".join(f"{v:.1f}" for v in values)  # noqa: E731
    click.echo(f"model    {r.model}")
    click.echo(f"kernel   {r.kernel}, {r.threads} thread{'s' if r.threads != 1 else ''}; "
               f"ternary {r.ternary}, head {r.head}")
    if n_prompt:
        click.echo(f"pp{n_prompt:<6} {r.pp_tok_s:8.1f} tok/s   (runs: {runs(r.pp_runs)})")
    if n_gen:
        click.echo(f"tg{n_gen:<6} {r.tg_tok_s:8.1f} tok/s   (runs: {runs(r.tg_runs)})")
        click.echo(f"bus      {r.bytes_per_token_mb:.0f} MB read per token; read bandwidth {r.read_bandwidth_gbs:.1f} GB/s;"
                   f" {r.bus_share:.0%} of the bus limit reached")
    if r.long_context:
        click.echo(f"tg{n_gen} after {r.long_context - n_gen} positions  {r.long_tg_tok_s:.1f} tok/s")
    click.echo(f"load to first logits  {r.load_to_first_logits_s * 1000:.0f} ms")
    click.echo(f"peak RSS {r.peak_rss_mb:.0f} MB")
    if vs:
        click.echo("\n" + bench_llamacpp.format_table(r, vs))


def main() -> None:
    cli()
