/**
 * `imgcast`: the imaging server side and administration. Today it multicasts images
 * (`send`); the session scheduler, HTTP API and console build on the same transport.
 */
import { Command } from 'commander';
import { VERSION, reportError } from './output.ts';
import { addAdminCommands } from './admin.ts';
import { addBootenvCommands } from './bootenv.ts';
import { addSendCommand } from './send.ts';
import { addServerCommand } from './server.ts';
import { addSettingsCommands } from './settings.ts';

export function buildImgcastProgram(): Command {
  const program = new Command('imgcast')
    .description('imgcast server and administration: multicast disk images to whole labs')
    .version(VERSION, '-V, --version', 'print the version')
    .showHelpAfterError()
    .exitOverride();
  addServerCommand(program);
  addAdminCommands(program);
  addSettingsCommands(program);
  addSendCommand(program);
  addBootenvCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildImgcastProgram();
  try {
    if (argv.length <= 2) {
      // `npm start` with no arguments: show what the product can do rather than fail.
      program.outputHelp();
      process.stdout.write('\nWorkstation engine: npx img --help\n');
      return;
    }
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError('imgcast', argv.includes('--json'), err);
  }
}

if (import.meta.main) await main(process.argv);
