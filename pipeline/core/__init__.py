"""Foundations every stage stands on: errors, settings, intervals, file formats, stop signals, process set-up, number formats."""
