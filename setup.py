# The one thing pyproject.toml cannot say without setuptools' beta `ext-modules`
# table: the optional C reader of /proc/<pid>/stat (collector/_procscan.c). Optional:
# without a compiler the build goes on and ctxmon uses its pure-Python scan.
from setuptools import Extension, setup

setup(ext_modules=[Extension("collector._procscan", ["collector/_procscan.c"], optional=True)])
