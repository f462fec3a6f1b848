/**
 * What a workstation may be named. One name serves the Linux host name (/etc/hostname, the
 * 127.0.1.1 line of /etc/hosts, the SSH host keys' comment) and the Windows computer name,
 * so it is held to a host name's rules (RFC 1123: one label of letters, digits and hyphens,
 * neither first nor last a hyphen, at most 63 characters). Windows allows fewer: 15
 * characters, not digits alone; a longer name still names the Linux side, and the Windows
 * side says why it was not set.
 */
import { IdentityError } from './errors.ts';

const LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/;
export const HOSTNAME_MAX = 63;
/** NetBIOS: a longer ComputerName stops Windows setup in its specialize pass. */
export const WINDOWS_NAME_MAX = 15;

/** Why `name` cannot be a host name, or undefined when it can. */
export function hostnameProblem(name: string): string | undefined {
  if (name.length === 0) return 'the name is empty';
  if (name.length > HOSTNAME_MAX)
    return `${JSON.stringify(name)} is ${name.length} characters long; a host name has at most ${HOSTNAME_MAX}`;
  if (name.includes('.'))
    return `${JSON.stringify(name)} holds a dot: give the host name alone (one label), not a domain name`;
  if (!LABEL.test(name)) {
    return `${JSON.stringify(name)} is not a host name: letters a-z, digits and "-" only, starting and ending with a letter or digit`;
  }
  return undefined;
}

/** Refuses (E_IDENTITY_NAME) a name that cannot be a host name. */
export function checkIdentityName(name: string): void {
  const problem = hostnameProblem(name);
  if (problem)
    throw new IdentityError('E_IDENTITY_NAME', `cannot name the workstation: ${problem}`, { name });
}

/** Advice (not a refusal) about a valid host name: upper-case letters are legal but mixed-case names confuse DNS and SSH known_hosts matching. */
export function hostnameAdvice(name: string): string | undefined {
  return name !== name.toLowerCase()
    ? `the name ${name} has upper-case letters; host names are compared without case, and lower case is the convention`
    : undefined;
}

/** Why a (valid host) name cannot be a Windows computer name, or undefined when it can. */
export function windowsNameProblem(name: string): string | undefined {
  if (name.length > WINDOWS_NAME_MAX)
    return `${name} is ${name.length} characters long and Windows computer names have at most ${WINDOWS_NAME_MAX}`;
  if (/^[0-9]+$/.test(name)) return `${name} is digits only, which Windows does not take as a computer name`;
  return hostnameProblem(name);
}
