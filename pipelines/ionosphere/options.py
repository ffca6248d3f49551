"""The ionosphere pipeline's name and its settings: the run options (given to ``load`` and
read by the ``sample`` hook) and the options of ``simulate``.

A module of its own, importing nothing heavy, so that the package's ``__init__`` can build
``PIPELINE`` when the CLI imports it.
"""

from __future__ import annotations

from astroinfer.pipeline import PipelineOption, parse_count, parse_positive

__all__ = ["NAME", "RUN_OPTIONS", "SIMULATE_OPTIONS", "LOAD_DEFAULTS"]

NAME = "ionosphere"

RUN_OPTIONS = (
    PipelineOption("phase_noise", "phase noise per channel in radians (sets the von Mises kappa)", 0.3, parse_positive),
    PipelineOption("dtec_max", "dTEC prior: Uniform(-dtec_max, dtec_max) TECU", 1.0, parse_positive),
    PipelineOption("fit_clock", "also fit a clock delay tau (2-D grid: slower)", False, flag=True),
    PipelineOption("clock_max", "clock prior: Uniform(-clock_max, clock_max) seconds", 2e-8, parse_positive),
    PipelineOption("ref_ant", "subtract this station's phases first (default: none; h5parm phases are "
                   "usually already referenced)", None, str),
    PipelineOption("solset", "solset to read (default: the first with a phase soltab)", None, str),
    PipelineOption("soltab", "phase soltab to read (default: the first with TITLE 'phase')", None, str),
    PipelineOption("draws", "posterior draws kept per problem", 100, parse_count(1)),
    PipelineOption("chunk_size", "problems per chunk (the unit of resume and of Dask tasks)", 8192, parse_count(1)),
    PipelineOption("h5parm_out", "the TEC h5parm to write (default: OUT with .h5 replaced by .tec.h5)", None, str),
    PipelineOption("smooth", "after the per-problem stage, smooth each station's dTEC over time with a Gaussian "
                   "process (tinygp, Matern-3/2) and flag the problems it calls outliers", False, flag=True),
)

#: Every run option's default: the ``sample`` hook's settings are these updated by the run's.
LOAD_DEFAULTS = {option.name: option.default for option in RUN_OPTIONS}

SIMULATE_OPTIONS = (
    PipelineOption("num_times", "time slots", 24, parse_count(1)),
    PipelineOption("num_ants", "stations", 6, parse_count(1)),
    PipelineOption("num_dirs", "directions", 1, parse_count(1)),
    PipelineOption("num_pols", "polarisations (1-4)", 2, parse_count(1)),
    PipelineOption("num_freqs", "channels, 120-168 MHz", 24, parse_count(1)),
    PipelineOption("noise", "phase noise in radians", 0.3, parse_positive),
    PipelineOption("dtec_range", "largest |dTEC| of the truth, TECU", 0.4, parse_positive),
    PipelineOption("clock", "add a clock delay per station (up to 5 ns)", False, flag=True),
)
