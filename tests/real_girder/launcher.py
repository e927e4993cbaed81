"""Starts a real Girder 5.0.21 in this process for the project's tests.

Girder, its jobs/worker/large_image plugins and their REST layer are the real PyPI packages; only
the storage under them is swapped, the way Girder's own test suite runs with `--mock-db`:
mongomock in place of MongoDB (patched into pymongo before Girder connects, its collection calls
serialised with one lock because Girder serves each request on a thread and mongomock is not
thread-safe) and fakeredis in place of redis (Girder 5 publishes job and progress notifications
there). Files go to a filesystem assetstore in `--assetstore`.

The database starts empty: as on a new deployment, the first user created (`POST /user`) becomes
the site admin. It binds 127.0.0.1 on `--port` (0: a free port), mounts the NimbusImage stand-in
(nimbus_stub.py) and the test-only `dev_support` routes, puts the mock's fault injection
(`/mock/faults`, faults.py) in front of Girder, then prints `GIRDER_URL
http://127.0.0.1:PORT/api/v1` once connections are accepted. With `--broker URL` it is also a
girder_worker deployment's Girder: its worker plugin publishes Celery tasks to that broker,
`worker.api_url` points at this server, and `POST /tool_launch` (tool_launch.py) launches worker
images as NimbusImage does. It exits when its
standard input closes, so a test run that ends, however it ends, takes its server with it.
"""
import argparse
import logging
import os
import socket
import sys
import threading

import mongomock
import mongomock.command_cursor
import pymongo

_DB_LOCK = threading.RLock()


def _patch_storage():
    pymongo.MongoClient = mongomock.MongoClient
    coll = mongomock.collection.Collection

    create_index = coll.create_index

    def tolerant_create_index(self, keys, *args, **kwargs):
        # mongomock lacks some index kinds Girder asks for (text, 2dsphere); they only speed
        # queries up, so their absence changes no answer.
        try:
            return create_index(self, keys, *args, **kwargs)
        except Exception:
            return None
    coll.create_index = tolerant_create_index

    with_options = coll.with_options

    def naive_tz_options(self, codec_options=None, **kwargs):
        # Girder asks for tz-aware UTC datetimes; mongomock refuses any tzinfo but keeps tz_aware.
        if codec_options is not None and getattr(codec_options, 'tzinfo', None) is not None:
            codec_options = codec_options.with_options(tzinfo=None)
        return with_options(self, codec_options=codec_options, **kwargs)
    coll.with_options = naive_tz_options

    if not hasattr(mongomock.collection.Cursor, 'count'):
        # pymongo 4 dropped Cursor.count(); Girder shims it for pymongo cursors only.
        mongomock.collection.Cursor.count = (
            lambda self, with_limit_and_skip=False: len(self._compute_results(with_limit_and_skip)))

    def locked(fn):
        def call(*args, **kwargs):
            with _DB_LOCK:
                return fn(*args, **kwargs)
        call.__name__ = fn.__name__
        return call
    for name in dir(coll):
        attr = getattr(coll, name)
        if not name.startswith('_') and callable(attr) and not isinstance(attr, type):
            setattr(coll, name, locked(attr))


def _patch_after_import():
    import girder.api.rest as rest
    # Girder recognises list results to serialise by pymongo cursor type only.
    rest._MONGO_CURSOR_TYPES = tuple(rest._MONGO_CURSOR_TYPES) + (
        mongomock.collection.Cursor, mongomock.command_cursor.CommandCursor)
    import fakeredis
    import fakeredis.aioredis
    import girder.notification as notification
    server = fakeredis.FakeServer()
    notification._redis_client_sync = lambda: fakeredis.FakeRedis(server=server)
    notification._redis_client_async = lambda: fakeredis.aioredis.FakeRedis(server=server)


def _dev_support(api_root):
    """Test-only routes, not Girder's: what a deployment does server-side, reachable over REST."""
    from girder.api import access
    from girder.api.rest import Resource
    from girder.constants import TokenScope
    from girder.models.token import Token
    from girder.models.user import User
    from girder.tasks import is_local_worker_available
    from girder_worker.app import app as celery

    class DevSupport(Resource):
        def __init__(self):
            super().__init__()
            self.resourceName = 'dev_support'
            self.route('POST', ('job_token',), self.job_token)
            self.route('PUT', ('local_worker',), self.local_worker)
            self.route('PUT', ('disk_reserve',), self.disk_reserve)

        @access.admin
        def job_token(self, params):
            # POST /job demands a token scoped jobs.rest.create_job, which no login or API key
            # carries (NimbusImage creates jobs server-side); tests mint one for a user here.
            from girder_jobs.constants import REST_CREATE_JOB_TOKEN_SCOPE, REST_LIST_JOB_TOKEN_SCOPE
            user = User().load(params['userId'], force=True, exc=True)
            token = Token().createToken(user=user, days=1, scope=[
                TokenScope.USER_AUTH, REST_CREATE_JOB_TOKEN_SCOPE, REST_LIST_JOB_TOKEN_SCOPE])
            return {'token': token['_id']}

        @access.admin
        def local_worker(self, params):
            # Girder runs folder deletion on a Celery worker of its `local` queue and answers 503
            # without one; eager mode is what a deployment with such a worker looks like.
            celery.conf.task_always_eager = params.get('enabled', 'true') == 'true'
            is_local_worker_available.invalidate()
            return {'enabled': celery.conf.task_always_eager}

        @access.admin
        def disk_reserve(self, params):
            # How a full disk looks to a client: the filesystem assetstore reads this reserve on
            # every upload and refuses uploads while less than it is free.
            os.environ['GIRDER_FILESYSTEMASSETSTORE_RESERVED_MBYTES'] = str(int(params['mb']))
            return {'mb': int(params['mb'])}

    api_root.dev_support = DevSupport()


def _exit_when_stdin_closes():
    def watch():
        try:
            while sys.stdin.buffer.read(1024):
                pass
        finally:
            os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--assetstore', required=True)
    # Girder's filesystem assetstore refuses every upload ("Assetstore is unavailable or has
    # insufficient free space") while the disk has less than this reserve free; its default is
    # 10 GiB, more than a CI runner has to spare. A test server stores kilobytes.
    ap.add_argument('--reserved-mb', type=int, default=16)
    # A Celery broker (redis://...) for girder_worker: the worker plugin publishes tasks there
    # (tool_launch.py), and `worker.api_url` is set to this server's URL for the tasks to call back.
    ap.add_argument('--broker')
    args = ap.parse_args()
    _exit_when_stdin_closes()
    if args.broker:
        # girder_worker's Celery app reads these once, when Girder's worker plugin imports it
        os.environ['GIRDER_WORKER_BROKER'] = args.broker
        os.environ['GIRDER_WORKER_BACKEND'] = args.broker

    os.environ['GIRDER_SERVER_MODE'] = 'development'
    os.environ['GIRDER_MONGO_URI'] = 'mongodb://localhost:27017/girder'
    # read by the assetstore on every upload; a value <= 0 means Girder's 10 GiB default
    os.environ['GIRDER_FILESYSTEMASSETSTORE_RESERVED_MBYTES'] = str(args.reserved_mb)
    os.makedirs(args.assetstore, exist_ok=True)
    _patch_storage()
    from girder.utility import config
    config.getConfig()['database']['uri'] = os.environ['GIRDER_MONGO_URI']
    _patch_after_import()

    import girder.asgi  # builds the app and loads every installed plugin
    import girder.wsgi
    logging.basicConfig(level=logging.WARNING, force=True, format='%(levelname)s %(name)s: %(message)s')
    api_root = girder.wsgi.info['apiRoot']
    # the stand-in routes carry no Swagger descriptions; Girder warns once per route otherwise
    logging.getLogger('girder.api.rest').setLevel(logging.ERROR)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nimbus_stub
    nimbus_stub.mount(api_root)
    import faults
    _dev_support(api_root)
    if args.broker:
        import tool_launch
        tool_launch.mount(api_root)

    from girder.models.assetstore import Assetstore
    Assetstore().createFilesystemAssetstore(name='local', root=args.assetstore)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    if args.broker:
        from girder.models.setting import Setting
        from girder_plugin_worker.constants import PluginSettings
        Setting().set(PluginSettings.API_URL, f'http://127.0.0.1:{port}/api/v1')

    import uvicorn
    server = uvicorn.Server(uvicorn.Config(
        faults.Faults(girder.asgi.app), log_level='warning', server_header=False, date_header=False))
    # Print the URL only once uvicorn serves; connections that come earlier wait in the backlog.
    startup = server.startup

    async def announce(sockets=None):
        await startup(sockets=sockets)
        print(f'GIRDER_URL http://127.0.0.1:{port}/api/v1', flush=True)
    server.startup = announce
    server.run(sockets=[sock])


if __name__ == '__main__':
    sys.exit(main())
