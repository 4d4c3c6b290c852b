#!/bin/sh
# Run once per `docker compose up` by the s3-init service (image minio/mc): creates the
# data catalog's bucket and the store user that notebooks and jobs write with. That user
# may list the bucket, and read and add objects under data/ (the data root,
# DOCKYARD_DATA_ROOT in docker-compose.yml) but never delete one: the batch-ID pattern
# never deletes, and a user's code cannot destroy another's data. Runs' files
# (_artifacts/: notebook snapshots, executed notebooks) are out of its reach. Idempotent.
set -eu

mc alias set store "$S3_ENDPOINT" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >/dev/null
tries=0
until mc ready store >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "s3-init: the store at $S3_ENDPOINT did not answer" >&2; exit 1; }
    sleep 1
done
mc mb --ignore-existing "store/$S3_BUCKET"

cat >/tmp/dockyard-clients.json <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
     "Resource": ["arn:aws:s3:::$S3_BUCKET"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$S3_BUCKET/data/*"]}
  ]
}
POLICY
mc admin policy create store dockyard-clients /tmp/dockyard-clients.json >/dev/null
mc admin user add store "$S3_CLIENT_ACCESS_KEY" "$S3_CLIENT_SECRET_KEY" >/dev/null
# Attaching a policy that is already attached is reported as an error; that is fine here.
mc admin policy attach store dockyard-clients --user "$S3_CLIENT_ACCESS_KEY" >/dev/null 2>&1 \
    || mc admin user info store "$S3_CLIENT_ACCESS_KEY" | grep -q dockyard-clients
echo "s3-init: bucket $S3_BUCKET and user $S3_CLIENT_ACCESS_KEY ready"
