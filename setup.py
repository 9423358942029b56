"""Maps the top-level ``domains/`` folder to the ``sciffusion.domains`` package."""
from setuptools import find_packages, setup

core = find_packages(include=["sciffusion", "sciffusion.*"])
domains = ["sciffusion." + name for name in find_packages(include=["domains", "domains.*"])]
setup(packages=core + domains, package_dir={"sciffusion.domains": "domains"})
