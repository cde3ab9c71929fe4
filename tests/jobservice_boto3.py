"""Checks the CodePipeline job service double with boto3, an independent client.

Usage: python jobservice_boto3.py URL OK_JOB_ID FAILED_JOB_ID
Both jobs must be registered and open. Prints "boto3: all checks passed" and exits 0 on success.
"""

import sys

import boto3
from botocore.config import Config

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def expect_error(code, call, **kwargs):
    try:
        call(**kwargs)
    except Exception as e:  # botocore.exceptions.ClientError subclasses
        got = getattr(e, "response", {}).get("Error", {}).get("Code")
        if got != code:
            raise AssertionError(f"expected {code}, got {got}: {e}") from e
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def main(url, ok_job, failed_job):
    cp = boto3.client(
        "codepipeline",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDLOCAL",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )
    checks = 0

    details = cp.get_job_details(jobId=ok_job)["jobDetails"]
    assert details["id"] == ok_job, details
    ctx = details["data"]["pipelineContext"]
    assert ctx["pipelineName"] == "shop", ctx
    assert ctx["stage"]["name"] == "Staging", ctx
    assert ctx["action"]["name"] == "Snapshot", ctx
    checks += 1

    # The modeled exception classes match the double's error codes.
    e = expect_error("JobNotFoundException", cp.get_job_details, jobId=UNKNOWN)
    assert isinstance(e, cp.exceptions.JobNotFoundException), type(e)
    checks += 1

    expect_error(
        "ValidationException",
        cp.put_job_success_result,
        jobId=ok_job,
        continuationToken="t",
        outputVariables={"A": "1"},
    )
    checks += 1

    cp.put_job_success_result(
        jobId=ok_job,
        executionDetails={"summary": "done", "externalExecutionId": "x", "percentComplete": 100},
        outputVariables={"SnapshotId": "snap-1"},
    )
    checks += 1

    e = expect_error(
        "InvalidJobStateException",
        cp.put_job_success_result,
        jobId=ok_job,
        executionDetails={"summary": "again"},
    )
    assert isinstance(e, cp.exceptions.InvalidJobStateException), type(e)
    checks += 1

    cp.put_job_failure_result(
        jobId=failed_job,
        failureDetails={"type": "SystemUnavailable", "message": "moto is down"},
    )
    checks += 1

    expect_error(
        "JobNotFoundException",
        cp.put_job_failure_result,
        jobId=UNKNOWN,
        failureDetails={"type": "JobFailed", "message": "m"},
    )
    checks += 1

    print(f"boto3: all checks passed ({checks})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
