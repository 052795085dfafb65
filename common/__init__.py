"""Leaf modules every layer may import (errors and exit codes, skeleton constants); they import nothing of ours."""
