"""Regenerate tests/fixtures/girder/tiles/: small TIFFs and what large_image 1.35.6 says of them.

The mock Girder's large_image behaviour (tile source choice, /tiles frames, regions) is checked
against these files. large_image is not in the project venv (it would pull GDAL-free but heavy
tile sources); make a scratch venv for it:

    python3 -m venv /tmp/livenv
    /tmp/livenv/bin/pip install 'large-image[tiff,tifffile,ometiff]==1.35.6' tifffile numpy
    /tmp/livenv/bin/python tools/large_image_fixtures.py

Pixel values follow the recorded seed image: frame f at (y, x) = base(f) + y*100 + (x % 100).
"""
import json
import os
import pickle
import sys

import large_image
import numpy as np
import tifffile

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'girder', 'tiles')


def planes(n, h, w, dtype=np.uint16):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(c * 30000 % 60000) + y * 100 + (x % 100) for c in range(n)]).astype(dtype)


def cases():
    yield 'cyx', planes(2, 40, 48), dict(metadata={'axes': 'CYX', 'Channel': {'Name': ['DAPI', 'GFP']}})
    yield 'cyx_tiled', planes(2, 40, 48), dict(
        metadata={'axes': 'CYX', 'Channel': {'Name': ['DAPI', 'GFP']}}, tile=(16, 16))
    yield 'cyx_unnamed_u8', planes(2, 20, 24, np.uint8), dict(metadata={'axes': 'CYX'})
    yield 'zcyx', planes(6, 16, 24).reshape(3, 2, 16, 24), dict(metadata={'axes': 'ZCYX'})
    yield 'tzcyx', planes(12, 16, 24).reshape(2, 3, 2, 16, 24), dict(metadata={'axes': 'TZCYX'})
    yield 'pages', planes(3, 16, 24), None
    yield 'single_u8', planes(1, 16, 24, np.uint8)[0], dict(metadata=None)


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, data, kwargs in cases():
        path = os.path.join(OUT, name + ('.tif' if kwargs is None or kwargs.get('metadata') is None else '.ome.tif'))
        if kwargs is None:  # plain multi-page: one page at a time, no shape description
            with tifffile.TiffWriter(path) as w:
                for page in data:
                    w.write(page, metadata=None, photometric='minisblack')
        else:
            tifffile.imwrite(path, data, photometric='minisblack', **kwargs)
        src = large_image.open(path)
        meta = src.getMetadata()
        region, _ = src.getRegion(format='numpy', frame=min(1, len(meta.get('frames', [0])) - 1),
                                  region=dict(left=10, top=2, right=14, bottom=4))
        expected[os.path.basename(path)] = {
            'sourceName': src.name,
            'tiles': json.loads(json.dumps(meta)),
            'region_frame1_l10_t2_r14_b4': region[:, :, 0].tolist(),
            'region_pickle5_hex': pickle.dumps(region, protocol=5).hex(),
        }
    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print('wrote', len(expected), 'fixtures to', os.path.normpath(OUT), file=sys.stderr)


if __name__ == '__main__':
    main()
