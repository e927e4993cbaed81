"""Fault injection for the real Girder the tests start, with the mock's protocol
(src/mock_girder/faults.rs), so one test drives both servers the same way.

An ASGI layer in front of Girder's app. `POST /mock/faults` with
`{"method": "PUT", "path": "<regex searched in the path>", "count": N, "skip": S,
"status": 502 | "delay_ms": 5000, "after": false, "echo": false}` lets the first S matching
requests through, then answers the next N with that status (or delays them). With
`"after": true` Girder handles the request first (its effect happens) and only the answer is
replaced: a lost response. With `"echo": true` the answer's message quotes the request back,
token and query string included. `DELETE /mock/faults` clears the faults. The first matching
rule decides. `drop` (closing the connection without an answer) is refused: uvicorn answers
500 to an application that sends nothing.
"""
import asyncio
import json
import re
import threading


class Faults:
    def __init__(self, app):
        self.app = app
        self.rules = []
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        path = scope['path']
        if path == '/mock/faults':
            return await self._admin(scope, receive, send)
        rule = self._take(scope['method'], path)
        if rule is None:
            return await self.app(scope, receive, send)
        if rule.get('delay_ms') is not None:
            await asyncio.sleep(rule['delay_ms'] / 1000.0)
            return await self.app(scope, receive, send)
        if rule['after']:
            async def swallow(message):
                pass
            await self.app(scope, receive, swallow)
        else:
            await _read_body(receive)
        if rule['echo']:
            headers = dict(scope.get('headers') or [])
            token = headers.get(b'girder-token', b'').decode('latin-1')
            query = scope.get('query_string', b'').decode('latin-1')
            body = {'message': f'Bad token {token} for {path}?{query}', 'type': 'rest'}
        else:
            body = {'message': f"mock Girder: injected fault {rule['status']}", 'type': 'mock_fault'}
        await _answer(send, rule['status'], body)

    def _take(self, method, path):
        with self.lock:
            for rule in self.rules:
                if rule['remaining'] <= 0:
                    continue
                if rule['method'] not in (None, method.upper()) or not rule['path'].search(path):
                    continue
                if rule['skip'] > 0:
                    rule['skip'] -= 1
                    return None
                rule['remaining'] -= 1
                taken = dict(rule)
                self.rules = [r for r in self.rules if r['remaining'] > 0]
                return taken
        return None

    async def _admin(self, scope, receive, send):
        body = await _read_body(receive)
        if scope['method'] == 'DELETE':
            with self.lock:
                self.rules = []
            return await _answer(send, 200, None)
        if scope['method'] != 'POST':
            return await _answer(send, 405, {'message': 'POST or DELETE', 'type': 'rest'})
        try:
            rule = _rule(json.loads(body or b'{}'))
        except (ValueError, TypeError, re.error) as e:
            return await _answer(send, 400, {'message': f'bad fault: {e}', 'type': 'rest'})
        with self.lock:
            self.rules.append(rule)
        return await _answer(send, 200, {'added': True})


def _rule(spec):
    known = {'method', 'path', 'count', 'skip', 'status', 'delay_ms', 'drop', 'after', 'echo'}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f'unknown fields {sorted(unknown)}')
    if spec.get('drop'):
        raise ValueError('`drop` is not offered by the real-Girder launcher')
    status, delay = spec.get('status'), spec.get('delay_ms')
    if (status is None) == (delay is None):
        raise ValueError('give exactly one of `status` (100-599) or `delay_ms`')
    if status is not None and not 100 <= int(status) < 600:
        raise ValueError('`status` must be 100-599')
    if delay is not None and (spec.get('after') or spec.get('echo')):
        raise ValueError('`after` and `echo` apply to `status` only')
    method = spec.get('method')
    return {
        'method': method.upper() if method else None,
        'path': re.compile(spec['path']),
        'remaining': int(spec.get('count', 1)),
        'skip': int(spec.get('skip', 0)),
        'status': None if status is None else int(status),
        'delay_ms': delay,
        'after': bool(spec.get('after', False)),
        'echo': bool(spec.get('echo', False)),
    }


async def _read_body(receive):
    body = b''
    while True:
        message = await receive()
        if message['type'] != 'http.request':
            return body
        body += message.get('body', b'')
        if not message.get('more_body'):
            return body


async def _answer(send, status, body):
    data = json.dumps(body).encode()
    await send({'type': 'http.response.start', 'status': status, 'headers': [
        (b'content-type', b'application/json'), (b'content-length', str(len(data)).encode())]})
    await send({'type': 'http.response.body', 'body': data})
