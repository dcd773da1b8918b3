"""What a model's signal propagation says, in plain words: `diagnose`, `diagnose_run`, `tune_init`.

| module | owns |
| --- | --- |
| `_measures` | numbers from a stream of states: resolution share, growth rate and phase, token and attention statistics |
| `_findings` | `Finding`s: each problem, the numbers that show it, what to change |
| `_programs` | the compiled programs a diagnosis runs (a module's functions, layerwise spectra, gradients) |
| `_result` | `Diagnosis`: the measurements and findings, as a table, plain data and a figure |
| `_diagnose` | `diagnose`: measure a model and call its findings |
| `_run` | `diagnose_run`: a diagnosis of a run directory's checkpoint |
| `_tune` | `tune_init`: the initial scales that put χ (or another target) at its critical value |
"""

from isometry.diagnosis._diagnose import diagnose
from isometry.diagnosis._findings import Finding
from isometry.diagnosis._result import Diagnosis
from isometry.diagnosis._run import RunDiagnosis, diagnose_run
from isometry.diagnosis._tune import TuneResult, tune_init

__all__ = ["diagnose", "Diagnosis", "Finding", "diagnose_run", "RunDiagnosis", "tune_init",
           "TuneResult"]
