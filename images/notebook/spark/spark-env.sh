# Sourced by Spark's launch scripts (spark-submit, and pyspark through it).
# SPARK_MASTER picks a cluster (spark://host:7077, k8s://..., yarn); unset means local mode
# on all of the container's cores. Spark reads MASTER after --master and spark.master.
export MASTER="${SPARK_MASTER:-local[*]}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-/opt/venv/bin/python}"
