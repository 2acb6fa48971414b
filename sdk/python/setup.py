"""Builds lockstep-client (metadata in pyproject.toml). The gRPC stubs under
lockstep_client/_proto are generated from ../../proto first (generate_stubs.py)
so that setuptools finds every package it lists."""
import os
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))

subprocess.run([sys.executable, os.path.join(HERE, "generate_stubs.py")], check=True)
setup()
