"""A test-only stand-in for the NimbusImage routes the worker calls, on Girder's real model layer.

NimbusImage's annotation plugin (`upenncontrast_annotation`) is not on PyPI, so the real-Girder
tests mount this instead. It serves only what the worker and its tests use, with the request and
response shapes recorded from a live Girder with that plugin (shared/girder-api/API_EXAMPLES.md):

- `POST /upenn_annotation`, `POST /upenn_annotation/multiple`: validate and store; the answer is
  the stored document (Girder's JSON encoder: keys sorted, `_id` a string).
- `GET /upenn_annotation?datasetId=&shape=&tags=&limit=&offset=&sort=&sortdir=&afterId=`:
  a streamed JSON array (no Content-Length) in stored key order with `_id` last, and
  `Girder-Total-Count` for the whole match; tags match with `$all`.
- `GET /upenn_annotation/count?datasetId=&shape=`: `{"count": n}`.
- `GET /upenn_annotation/{id}`, `PUT /upenn_annotation/{id}` (answers `null`).
- `POST /worker_interface?image=` (JSON body) and `GET /worker_interface?image=` (the interface, or
  `null`).

Access follows the dataset folder through Girder's own access checks, so a request without a token
is 401 "Read access denied for folder X (user None)." and another user's is 403.
"""
import json

from bson.objectid import ObjectId
from girder.api import access
from girder.api.rest import Resource, setResponseHeader, setRawResponse
from girder.constants import AccessType
from girder.exceptions import RestException, ValidationException
from girder.models.folder import Folder
from girder.models.model_base import AccessControlledModel, Model

REQUIRED = ['coordinates', 'tags', 'channel', 'location', 'shape', 'datasetId']
SHAPES = {'point', 'line', 'polygon', 'rectangle'}


class AnnotationModel(Model):
    def initialize(self):
        self.name = 'upenn_annotation'
        self.ensureIndices(['datasetId'])

    def validate(self, doc):
        missing = [k for k in REQUIRED if k not in doc]
        if missing:
            raise ValidationException(f'data must contain {missing} properties')
        if doc['shape'] not in SHAPES:
            raise ValidationException(f"data.shape must be one of {sorted(SHAPES)}")
        if not isinstance(doc['coordinates'], list) or not doc['coordinates']:
            raise ValidationException('data.coordinates must contain at least 1 items')
        if not isinstance(doc['channel'], int) or isinstance(doc['channel'], bool):
            raise ValidationException('data.channel must be integer')
        if not isinstance(doc['tags'], list) or not all(isinstance(t, str) for t in doc['tags']):
            raise ValidationException('data.tags must be array of strings')
        loc = doc['location']
        if not isinstance(loc, dict) or any(not isinstance(loc.get(k), int) for k in ('XY', 'Z', 'Time')):
            raise ValidationException("data.location must contain ['XY', 'Z', 'Time'] integer properties")
        return doc


class WorkerInterfaceModel(AccessControlledModel):
    def initialize(self):
        self.name = 'worker_interface'
        self.ensureIndices(['image'])

    def validate(self, doc):
        return doc


def _dataset(dataset_id, user, level=AccessType.READ):
    return Folder().load(dataset_id, user=user, level=level, exc=True)


def _stored_order(doc):
    """A document as the plugin's streamed list writes it: stored key order, string ids, `_id` last."""
    out = {k: (str(v) if isinstance(v, ObjectId) else v) for k, v in doc.items() if k != '_id'}
    out['_id'] = str(doc['_id'])
    return out


class UpennAnnotation(Resource):
    def __init__(self):
        super().__init__()
        self.resourceName = 'upenn_annotation'
        self.route('POST', (), self.create)
        self.route('POST', ('multiple',), self.createMany)
        self.route('GET', (), self.find)
        self.route('GET', ('count',), self.count)
        self.route('GET', (':id',), self.get)
        self.route('PUT', (':id',), self.update)

    def _store(self, doc, user):
        if not isinstance(doc, dict):
            raise RestException('Each annotation must be a JSON object.')
        AnnotationModel().validate(doc)
        _dataset(doc['datasetId'], user, AccessType.WRITE)
        doc = dict(doc)
        doc['datasetId'] = ObjectId(doc['datasetId'])
        return AnnotationModel().save(doc)

    @access.user
    def create(self, params):
        return self._store(self.getBodyJson(), self.getCurrentUser())

    @access.user
    def createMany(self, params):
        docs = self.getBodyJson()
        if not isinstance(docs, list):
            raise RestException('The body must be a JSON list of annotations.')
        user = self.getCurrentUser()
        for doc in docs:
            AnnotationModel().validate(doc)
        return [self._store(doc, user) for doc in docs]

    def _query(self, params):
        if 'datasetId' not in params:
            raise RestException('Parameter "datasetId" is required.')
        folder = _dataset(params['datasetId'], self.getCurrentUser())
        query = {'datasetId': folder['_id']}
        if params.get('shape'):
            query['shape'] = params['shape']
        if params.get('tags'):
            try:
                tags = json.loads(params['tags'])
            except ValueError:
                raise RestException('Parameter "tags" must be a JSON list.')
            if tags:
                query['tags'] = {'$all': tags}
        return query

    @access.public
    def find(self, params):
        query = self._query(params)
        if params.get('afterId'):
            query['_id'] = {'$gt': ObjectId(params['afterId'])}
        limit = int(params.get('limit', 50))
        offset = int(params.get('offset', 0))
        sort = [(params.get('sort', '_id'), int(params.get('sortdir', 1)))]
        total = AnnotationModel().collection.count_documents(query)
        cursor = AnnotationModel().find(query, offset=offset, limit=limit, sort=sort)
        docs = [_stored_order(d) for d in cursor]
        setResponseHeader('Girder-Total-Count', str(total))
        setResponseHeader('Content-Type', 'application/json')
        setRawResponse()

        def stream():
            yield b'['
            for i, d in enumerate(docs):
                yield (b',' if i else b'') + json.dumps(d).encode()
            yield b']'
        return stream

    @access.public
    def count(self, params):
        return {'count': AnnotationModel().collection.count_documents(self._query(params))}

    def _load(self, id, level):
        doc = AnnotationModel().load(id, exc=True)
        _dataset(doc['datasetId'], self.getCurrentUser(), level)
        return doc

    @access.public
    def get(self, id, params):
        return self._load(id, AccessType.READ)

    @access.user
    def update(self, id, params):
        doc = self._load(id, AccessType.WRITE)
        body = self.getBodyJson()
        doc.update({k: v for k, v in body.items() if k not in ('_id', 'datasetId')})
        AnnotationModel().save(doc)
        return None


class WorkerInterface(Resource):
    def __init__(self):
        super().__init__()
        self.resourceName = 'worker_interface'
        self.route('POST', (), self.post)
        self.route('GET', (), self.get)

    @access.user
    def post(self, params):
        if 'image' not in params:
            raise RestException("Missing 'image' parameter")
        user = self.getCurrentUser()
        model = WorkerInterfaceModel()
        doc = model.findOne({'image': params['image']}) or {'image': params['image']}
        doc['interface'] = self.getBodyJson()
        if '_id' not in doc:
            model.setUserAccess(doc, user, AccessType.ADMIN, save=False)
        return model.save(doc)

    @access.user
    def get(self, params):
        if 'image' not in params:
            raise RestException("Missing 'image' parameter")
        doc = WorkerInterfaceModel().findOne({'image': params['image']})
        return doc['interface'] if doc else None


def mount(api_root):
    api_root.upenn_annotation = UpennAnnotation()
    api_root.worker_interface = WorkerInterface()
