"""A test-only route that launches a worker image the way NimbusImage's Girder plugin does when a
user runs a tool: through girder_worker's `docker_run` Celery task, on the queue the image's
`isGPUWorker` label selects.

`POST /tool_launch` (JSON body, as the logged-in user):
    {"image": "...", "request": "compute" | "interface", "datasetId": "...",
     "parameters": {...}, "name": "<container name>"}
answers `{"jobId": ..., "queue": "gpu" | "cpu", "containerArgs": [...]}`.

What it does, after the description of NimbusImage's launch (not its code):
- the container arguments are the one-shot contract: `--apiUrl` (the worker plugin's
  `worker.api_url`, the URL containers reach Girder at), `--token` (the requesting user's token),
  `--request`, `--parameters` (the JSON given, with `image` added), `--datasetId`;
- the queue is "gpu" when the image is labelled `isGPUWorker` (any non-empty value), else "cpu";
  interface requests always go to "cpu";
- `docker_run.apply_async((image,), kwargs={pull_image: False, container_args, remove_container:
  True, name, girder_job_title, network_mode: "host"}, queue=..., time_limit=86400)`. girder_worker's
  publish hook creates the Girder job (owned by the requesting user) and passes it a token to update
  it; the Celery worker that takes the task starts the container with the Docker SDK, streams its
  stdout/stderr into the job log and sets the job's status from the exit code.

`network_mode: "host"` is this test deployment's choice: its containers may use only the host
network (loopback). Without it girder_worker puts the container on the network of the container
girder_worker itself runs in (NimbusImage's compose file runs it in one).
"""
import json
import uuid

import docker
from girder.api import access
from girder.api.rest import Resource
from girder.exceptions import RestException


def _queue(image, request):
    if request == 'interface':
        return 'cpu'
    labels = docker.from_env(version='auto').images.get(image).labels or {}
    return 'gpu' if labels.get('isGPUWorker') else 'cpu'


class ToolLaunch(Resource):
    def __init__(self):
        super().__init__()
        self.resourceName = 'tool_launch'
        self.route('POST', (), self.launch)

    @access.user
    def launch(self, params):
        from girder_plugin_worker.utils import getWorkerApiUrl
        from girder_worker.docker.tasks import docker_run

        body = self.getBodyJson()
        image, request = body.get('image'), body.get('request')
        if not image or request not in ('compute', 'interface'):
            raise RestException('image and request (compute or interface) are required')
        parameters = dict(body.get('parameters') or {})
        parameters['image'] = image
        args = ['--apiUrl', getWorkerApiUrl(), '--token', self.getCurrentToken()['_id'],
                '--request', request, '--parameters', json.dumps(parameters)]
        if body.get('datasetId'):
            args += ['--datasetId', body['datasetId']]
        queue = _queue(image, request)
        # always a name, as NimbusImage gives one: girder_worker removes a container whose GPU
        # start failed (no NVIDIA runtime) by its name, and leaves an unnamed one behind
        name = body.get('name') or 'tool-launch-%s' % uuid.uuid4().hex[:12]
        result = docker_run.apply_async(
            (image,),
            kwargs={
                'pull_image': False,
                'container_args': args,
                'remove_container': True,
                'name': name,
                'girder_job_title': f'{image} {request}',
                'network_mode': 'host',
            },
            queue=queue,
            time_limit=86400)
        return {'jobId': str(result.job['_id']), 'queue': queue, 'containerArgs': args}


def mount(api_root):
    api_root.tool_launch = ToolLaunch()
