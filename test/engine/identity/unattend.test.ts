import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  AnswerFileError,
  computerNameOf,
  decodeAnswerFile,
  setComputerName,
} from '../../../src/engine/identity/unattend.ts';

/** An answer file as Windows System Image Manager writes one, with a decoy in a comment and CDATA. */
const SYSPREP = `<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
    <!-- <ComputerName>NOT-THIS</ComputerName> -->
    <settings pass="generalize">
        <component name="Microsoft-Windows-Security-SPP" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">
            <SkipRearm>1</SkipRearm>
        </component>
    </settings>
    <settings pass="specialize">
        <component name="Microsoft-Windows-International-Core" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
            <ComputerName>DECOY-OTHER-COMPONENT</ComputerName>
        </component>
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
            <ComputerName>REFPC</ComputerName>
            <RegisteredOwner>Lab &amp; Co</RegisteredOwner>
            <TimeZone>W. Europe Standard Time</TimeZone>
            <Description><![CDATA[</component> <ComputerName>X</ComputerName>]]></Description>
        </component>
    </settings>
    <settings pass="oobeSystem">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
            <UserAccounts><AdministratorPassword><Value>c2VjcmV0</Value><PlainText>false</PlainText></AdministratorPassword></UserAccounts>
        </component>
    </settings>
</unattend>
`;

test("the specialize pass's Shell-Setup ComputerName is replaced, and nothing else in the file changes", () => {
  const { xml, edit } = setComputerName(SYSPREP, 'lab1-01');
  assert.deepEqual(edit, { action: 'replaced', previous: 'REFPC' });
  assert.equal(
    xml,
    SYSPREP.replace('<ComputerName>REFPC</ComputerName>', '<ComputerName>lab1-01</ComputerName>'),
  );
  assert.equal(computerNameOf(xml), 'lab1-01');
  // Set again: idempotent.
  assert.equal(setComputerName(xml, 'lab1-01').xml, xml);
});

test('an empty or self-closing ComputerName, and a component without one, get the name', () => {
  const empty = SYSPREP.replace('<ComputerName>REFPC</ComputerName>', '<ComputerName />');
  const a = setComputerName(empty, 'pc2');
  assert.deepEqual(a.edit, { action: 'replaced', previous: '' });
  assert.equal(computerNameOf(a.xml), 'pc2');
  assert.equal(a.xml, SYSPREP.replace('REFPC', 'pc2'));

  const none = SYSPREP.replace('            <ComputerName>REFPC</ComputerName>\n', '');
  const b = setComputerName(none, 'pc3');
  assert.deepEqual(b.edit, { action: 'added' });
  // Added as the component's first child, indented like its siblings: the original file back.
  assert.equal(b.xml, SYSPREP.replace('REFPC', 'pc3'));
});

test('a specialize pass without Shell-Setup gets the component; a file without the pass gets both, before oobeSystem', () => {
  const noComponent = `<?xml version="1.0"?>\r\n<unattend xmlns="urn:schemas-microsoft-com:unattend">\r\n  <settings pass="specialize">\r\n    <component name="Microsoft-Windows-Deployment" processorArchitecture="arm64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">\r\n      <RunSynchronous />\r\n    </component>\r\n  </settings>\r\n</unattend>\r\n`;
  const a = setComputerName(noComponent, 'pc4');
  assert.deepEqual(a.edit, { action: 'component-added', architecture: 'arm64' });
  assert.equal(computerNameOf(a.xml), 'pc4');
  assert.ok(!a.xml.replaceAll('\r\n', '').includes('\n'), 'CRLF line endings kept');
  assert.match(
    a.xml,
    /\r\n {4}<component name="Microsoft-Windows-Shell-Setup" processorArchitecture="arm64"[^>]*>\r\n {6}<ComputerName>pc4<\/ComputerName>\r\n {4}<\/component>\r\n {4}<component name="Microsoft-Windows-Deployment"/,
  );

  const oobeOnly = `<unattend xmlns="urn:schemas-microsoft-com:unattend">\n  <settings pass="oobeSystem">\n    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="x86" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS"/>\n  </settings>\n</unattend>`;
  const b = setComputerName(oobeOnly, 'pc5');
  assert.deepEqual(b.edit, { action: 'pass-added', architecture: 'x86' });
  assert.equal(computerNameOf(b.xml), 'pc5');
  assert.ok(b.xml.indexOf('pass="specialize"') < b.xml.indexOf('pass="oobeSystem"'), b.xml);
  assert.ok(b.xml.endsWith('</unattend>'));

  const bare = '<unattend xmlns="urn:schemas-microsoft-com:unattend">\n</unattend>\n';
  const c = setComputerName(bare, 'pc6');
  assert.deepEqual(c.edit, { action: 'pass-added', architecture: 'amd64' });
  assert.equal(computerNameOf(c.xml), 'pc6');
});

test('a namespace prefix on the elements is kept on what is added', () => {
  const prefixed = `<u:unattend xmlns:u="urn:schemas-microsoft-com:unattend"><u:settings pass="specialize"><u:component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64"></u:component></u:settings></u:unattend>`;
  const r = setComputerName(prefixed, 'pc7');
  assert.match(r.xml, /<u:ComputerName>pc7<\/u:ComputerName>/);
  assert.equal(computerNameOf(r.xml), 'pc7');
});

test('what is not an answer file is refused, not guessed at', () => {
  for (const bad of [
    '<html><body/></html>',
    '<unattend><settings></unattend>',
    'no xml',
    '<unattend/><x/>',
    '<unattend a="1></unattend>',
  ]) {
    assert.throws(() => setComputerName(bad, 'pc'), AnswerFileError, bad);
  }
});

test('UTF-16 (either byte order) and UTF-8 with a byte-order mark come back in their own encoding', () => {
  for (const [bom, enc] of [
    [[0xff, 0xfe], (t: string) => Buffer.from(t, 'utf16le')],
    [[0xfe, 0xff], (t: string) => Buffer.from(t, 'utf16le').swap16()],
    [[0xef, 0xbb, 0xbf], (t: string) => Buffer.from(t, 'utf8')],
    [[], (t: string) => Buffer.from(t, 'utf8')],
  ] as const) {
    const bytes = Buffer.concat([Buffer.from(bom), enc(SYSPREP)]);
    const { text, encode } = decodeAnswerFile(bytes);
    assert.equal(text, SYSPREP);
    const edited = setComputerName(text, 'lab1-01').xml;
    assert.deepEqual(encode(edited), Buffer.concat([Buffer.from(bom), enc(edited)]));
  }
});
