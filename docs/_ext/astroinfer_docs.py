"""Sphinx directives that render reference material from the code, so the docs never drift.

``astroinfer-method-options METHOD``
    A table of the method's options and defaults, read from ``astroinfer.method_defaults``
    (and the allowed values from the method module's ``CHOICES``). Every option needs a
    one-line meaning below; an option without one, or a meaning for an option that no
    longer exists, is a build warning (an error under ``-W``).

``astroinfer-cli-help``
    The ``--help`` text of ``astroinfer`` and of each of its commands, from the Click
    objects in ``astroinfer.cli``.

``astroinfer-pipelines``
    A table of the built-in pipelines (``astroinfer.pipeline.BUILTIN``) with their one-line
    descriptions; a built-in pipeline without a page ``pipelines/NAME.md`` is a warning.
"""

from __future__ import annotations

import importlib
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# One line per option: what it does. Defaults and allowed values come from the code.
MEANINGS: dict[str, dict[str, str]] = {
    "nuts": {
        "num_warmup": "Warmup (adaptation) iterations per chain, discarded.",
        "num_chains": "Independent chains; R-hat needs at least two.",
        "target_accept_prob": "Acceptance probability the step size is adapted to; raise it "
                              "(e.g. 0.95) when there are divergences.",
        "max_tree_depth": "Largest tree depth: at most 2**depth leapfrog steps per draw.",
        "dense_mass": "Adapt a dense mass matrix instead of a diagonal one (strongly "
                      "correlated parameters).",
        "init": "Starting point: ``median`` (prior medians), ``uniform`` (NumPyro's "
                "``init_to_uniform``) or ``sample`` (a prior draw).",
        "chain_method": "``auto``: chains in parallel when JAX has one device per chain, else "
                        "one after another; or NumPyro's ``parallel``, ``sequential``, "
                        "``vectorized``.",
        "thinning": "Keep every n-th draw.",
    },
    "nested": {
        "num_live_points": "Live points; more give a smaller evidence error and more posterior "
                           "points.",
        "num_delete": "Points replaced per iteration, in parallel; ``None``: a tenth of the live "
                      "points (at least 1). Must be smaller than ``num_live_points``.",
        "num_inner_steps": "Slice-sampling moves that make each new point; ``None``: "
                           "max(5, 3 x number of parameters).",
        "termination": "Stop when the live points hold less than this fraction of the evidence.",
        "max_iterations": "Upper bound on iterations; stopping there before the termination "
                          "criterion is reported as a warning.",
        "steps_per_chunk": "Iterations compiled into one call between convergence checks and "
                           "progress updates.",
        "num_volume_simulations": "Simulated prior-volume sequences; the evidence and its error "
                                  "are their mean and standard deviation.",
    },
    "flowmc": {
        "num_chains": "Chains, run together (vectorised); they start at prior draws and are the "
                      "flow's training data.",
        "local_kernel": "Local move: MALA, HMC or NUTS (blackjax kernels).",
        "num_leapfrog_steps": "Leapfrog steps per HMC move (HMC only).",
        "num_warmup_loops": "Most warmup loops (a sweep of local and global moves, then flow "
                            "training); the last loop only adapts.",
        "steps_per_loop": "Iterations (local moves plus one global proposal) per sweep: one "
                          "sweep per warmup loop; production runs whole sweeps until it has "
                          "``num_samples`` draws per chain.",
        "local_steps_per_draw": "Local moves before each global proposal.",
        "target_global_acceptance": "Warmup stops early once the flow proposals' acceptance "
                                    "reaches this.",
        "flow_layers": "Layers (transforms) of the flow.",
        "flow_knots": "Knots of each rational-quadratic spline.",
        "flow_width": "Width of the flow's conditioner networks.",
        "learning_rate": "Adam learning rate for flow training.",
        "max_epochs": "Most training epochs per warmup loop.",
        "patience": "Early stopping: epochs without improvement of the held-out loss.",
        "batch_size": "Training mini-batch size (at most half the training points).",
        "max_training_points": "Chain positions used for one training, thinned evenly.",
        "reuse_flow": "Path of an earlier flow-MC result file of the same model, data and flow "
                      "shape: its trained flow is reused and training is skipped (one warmup "
                      "loop for burn-in and step sizes). ``None``: train a new flow.",
    },
}


def _format_default(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _table(rows: list[list[nodes.Node]], header: list[str], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["astroinfer-options"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head_row = nodes.row()
    head += head_row
    for title in header:
        head_row += nodes.entry("", nodes.paragraph(text=title))
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        body += row
        for cell in cells:
            row += nodes.entry("", cell)
    return table


class MethodOptions(SphinxDirective):
    """Table of one method's options: name, default, meaning."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        import astroinfer
        from astroinfer.engine import METHODS

        method = self.arguments[0]
        location = self.get_location()
        try:
            defaults = astroinfer.method_defaults(method)
        except Exception as err:  # unknown method: say so in the build
            logger.warning("astroinfer-method-options: %s", err, location=location)
            return []
        meanings = MEANINGS.get(method, {})
        choices = METHODS[method].choices
        for name in sorted(set(defaults) - set(meanings)):
            logger.warning(
                "astroinfer-method-options: option %r of method %r has no meaning in "
                "docs/_ext/astroinfer_docs.py", name, method, location=location,
            )
        for name in sorted(set(meanings) - set(defaults)):
            logger.warning(
                "astroinfer-method-options: %r is documented for method %r but is not one of "
                "its options", name, method, location=location,
            )
        rows = []
        for name, default in defaults.items():
            meaning = meanings.get(name, "")
            if name in choices:
                meaning += " One of " + ", ".join(f"``{c}``" for c in choices[name]) + "."
            text, _ = self.parse_inline(meaning, lineno=self.lineno)
            rows.append([
                nodes.paragraph("", "", nodes.literal(text=name)),
                nodes.paragraph("", "", nodes.literal(text=_format_default(default))),
                nodes.paragraph("", "", *text),
            ])
        return [_table(rows, ["option", "default", "meaning"], [22, 12, 66])]


def _click_root():
    """The Click group behind the ``astroinfer`` console script, or None if there is no CLI."""
    import click

    try:
        cli = importlib.import_module("astroinfer.cli")
    except ModuleNotFoundError as err:
        if err.name == "astroinfer.cli":
            return None
        raise
    for attr in ("main", "cli"):
        obj = getattr(cli, attr, None)
        if isinstance(obj, click.Command):
            return obj
    raise RuntimeError("astroinfer.cli has no Click command named main or cli")


class CliHelp(SphinxDirective):
    """``astroinfer --help`` and ``astroinfer COMMAND --help`` as literal blocks."""

    has_content = False
    option_spec = {"width": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        import click

        location = self.get_location()
        try:
            root = _click_root()
        except Exception as err:
            logger.warning("astroinfer-cli-help: cannot import the CLI: %s", err, location=location)
            return []
        if root is None:
            logger.info("astroinfer-cli-help: astroinfer.cli is not there yet; no help rendered")
            return []
        width = self.options.get("width", 88)
        out: list[nodes.Node] = []
        # make_context applies each command's context_settings (help option names, widths).
        ctx = root.make_context("astroinfer", [], resilient_parsing=True, terminal_width=width)

        def block(title: str, command: click.Command, context: click.Context) -> None:
            out.append(nodes.rubric(text=title))
            help_text = command.get_help(context)
            out.append(nodes.literal_block(help_text, help_text, language="text"))

        block("astroinfer --help", root, ctx)
        if isinstance(root, click.Group):
            for name in root.list_commands(ctx):
                command = root.get_command(ctx, name)
                if command is None or command.hidden:
                    continue
                sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
                block(f"astroinfer {name} --help", command, sub)
        return out


class PipelineList(SphinxDirective):
    """Table of the built-in pipelines: name (linked to its page) and description."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        location = self.get_location()
        try:
            registry = importlib.import_module("astroinfer.pipeline")
        except ModuleNotFoundError as err:
            if err.name == "astroinfer.pipeline":
                logger.info("astroinfer-pipelines: astroinfer.pipeline is not there yet")
                return []
            raise
        rows = []
        for name in sorted(registry.BUILTIN):
            try:
                pipeline = registry.get_pipeline(name)
            except Exception as err:
                logger.warning("astroinfer-pipelines: %s", err, location=location)
                continue
            docname = f"pipelines/{name}"
            if docname not in self.env.found_docs:
                logger.warning("astroinfer-pipelines: pipeline %r has no page docs/%s.md", name,
                               docname, location=location)
                name_cell = nodes.paragraph("", "", nodes.literal(text=name))
            else:
                ref = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + docname,
                                            refexplicit=True, refdoc=self.env.docname)
                ref += nodes.literal(text=name)
                name_cell = nodes.paragraph("", "", ref)
            rows.append([name_cell, nodes.paragraph(text=pipeline.description)])
        return [_table(rows, ["pipeline", "description"], [20, 80])]


def setup(app):
    app.add_directive("astroinfer-method-options", MethodOptions)
    app.add_directive("astroinfer-cli-help", CliHelp)
    app.add_directive("astroinfer-pipelines", PipelineList)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
