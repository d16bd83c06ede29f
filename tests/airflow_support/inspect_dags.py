"""Prints, as JSON, what Airflow's DagBag makes of the DAGs folder (run in a subprocess)."""

import json
import sys

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
report = {
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "dags": {
        dag_id: {
            "fileloc": dag.fileloc,
            "tasks": sorted(t.task_id for t in dag.tasks),
            "tags": sorted(dag.tags),
            "catchup": dag.catchup,
            "has_doc": bool(dag.doc_md),
            "start_date_tz": str(dag.start_date.tzinfo) if dag.start_date else None,
            "schedule": type(dag.timetable).__name__,
            "outlets": sorted({getattr(o, "name", str(o)) for t in dag.tasks for o in t.outlets}),
        }
        for dag_id, dag in bag.dags.items()
    },
}
print("JSON:" + json.dumps(report))
