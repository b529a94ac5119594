"""Time importing the plugin module (argv: plugins folder, module name, heavy modules as JSON).

Run by `crispflow validate` (`crispflow.stack.validate`) as `python -m crispflow_airflow.probes.plugin_import ...`, in its own process."""

# ruff: noqa
import importlib, json, sys, time
import airflow.plugins_manager
folder, name, heavy = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, folder)
before = set(sys.modules)
t = time.perf_counter()
importlib.import_module(name)
ms = (time.perf_counter() - t) * 1000
print(json.dumps({"ms": ms, "heavy": [m for m in heavy if m in sys.modules and m not in before]}))
