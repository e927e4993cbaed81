//! Python's `girder_client` (PyPI, pinned in tools/requirements.txt) works against the mock
//! unchanged: API-key login, folders, a 12 MiB upload both in one request and in 5 MiB chunks,
//! listing, a byte-identical download, deletion.

use cellpose_train_worker::mock_girder::MockHandle;

use super::girder_seed::seeded;
use super::helpers::run_python;

const SCRIPT: &str = r#"
import os, random, sys, tempfile
import girder_client

api_url, api_key = sys.argv[1], sys.argv[2]
gc = girder_client.GirderClient(apiUrl=api_url)
user = gc.authenticate(apiKey=api_key)
assert gc.get('user/me')['login'] == 'alice'
private = next(gc.listFolder(user['_id'], parentFolderType='user', name='Private'))
top = gc.createFolder(private['_id'], 'py-test', description='made by girder_client')
sub = gc.createFolder(top['_id'], 'sub', reuseExisting=True)
assert gc.createFolder(top['_id'], 'sub', reuseExisting=True)['_id'] == sub['_id']
data = random.Random(1).randbytes(12 * 1024 * 1024)
tmp = tempfile.mkdtemp()
src = os.path.join(tmp, 'big.bin')
with open(src, 'wb') as f:
    f.write(data)
gc.uploadFileToFolder(sub['_id'], src)            # one request: POST /file with the body
gc.MAX_CHUNK_SIZE = 5 * 1024 * 1024
with open(src, 'rb') as f:                         # init + three chunks (5, 5, 2 MiB)
    gc.uploadStreamToFolder(sub['_id'], f, 'chunked.bin', len(data))
items = list(gc.listItem(sub['_id']))
assert sorted(i['name'] for i in items) == ['big.bin', 'chunked.bin'], items
for item in items:
    out = os.path.join(tmp, 'out-' + item['_id'])
    os.makedirs(out)
    gc.downloadItem(item['_id'], out)
    with open(os.path.join(out, item['name']), 'rb') as f:
        assert f.read() == data, item['name']
    assert item['size'] == len(data)
    gc.delete('item/' + item['_id'])
assert list(gc.listItem(sub['_id'])) == []
print('girder_client ok')
"#;

async fn python(mock: &MockHandle, key: &str) -> String {
    let (url, key) = (mock.api_url.clone(), key.to_string());
    tokio::task::spawn_blocking(move || run_python(SCRIPT, &[&url, &key])).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_girder_client_works_against_the_mock_unchanged() {
    let s = seeded().await;
    let out = python(&s.mock, s.alice_key.expose()).await;
    assert!(out.contains("girder_client ok"), "{out}");
    let log = super::girder_seed::requests(&s.mock).await;
    assert_eq!(
        super::girder_seed::count(&log, "POST", "/file/chunk"),
        3,
        "the chunked upload went through /file/chunk"
    );
}
