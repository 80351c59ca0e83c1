"""Proof that transfer worked: classification statistics with bootstrap intervals (metrics), the
from-scratch baselines (baselines), the model against them and the verdict (compare), what it says
in words and pictures (report, plots, summary), transferability scores that rank backbones before
training (transferability) and the few-shot benchmark grid (fewshot, fewshot_report). Imports
graft.strategies and everything below it."""
